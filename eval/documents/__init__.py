"""The document benchmark (Python's language reference from pydoc_data, hand-written questions):
retrieval hit rate, answer scores and support; see eval/documents/benchmark.py."""

from eval.documents.benchmark import evaluate_documents, export_pydoc, holds_answer, load_questions, to_markdown

__all__ = ["evaluate_documents", "export_pydoc", "holds_answer", "load_questions", "to_markdown"]
