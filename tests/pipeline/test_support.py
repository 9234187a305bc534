"""pipeline.support: the lexical support of an answer by its passages, on fixed texts."""

from __future__ import annotations

import pytest

from pipeline.support import SUPPORTED, lcs_length, lexical_support


def test_lcs_length_on_fixed_token_lists():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0 and lcs_length(["a"], []) == 0


def test_support_is_the_share_of_the_answer_in_order_in_its_best_passage():
    passages = ["ARP maps an IP address to a MAC address on the local network.", "A MAC address is a hardware identifier."]
    score, best = lexical_support("ARP maps an IP address to a MAC address.", passages)
    assert score == 1.0 and best == 0
    score, best = lexical_support("It is a unique hardware identifier of a network card.", passages)
    assert best == 1 and score == pytest.approx(4 / 10) and score < SUPPORTED  # "is a hardware identifier": 4 of its 10 words
    assert lexical_support("Bananas are yellow.", passages)[0] < SUPPORTED
    assert lexical_support("", passages) == (0.0, None) and lexical_support("anything", []) == (0.0, None)
