"""Answerability: in-KB against out-of-KB questions, and the agent's calibrated grade (see benchmark.py)."""
