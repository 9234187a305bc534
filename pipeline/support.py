"""How much of an answer its passages hold: the lexical support of an answer by its sources.

    from pipeline.support import lexical_support, SUPPORTED
    score, best = lexical_support(answer, passages)   # ROUGE-L precision against the best passage, its index
    score >= SUPPORTED                                 # at least half the answer's words, in order, from one passage

The share of an answer's words that appear, in order, in one passage: the longest common
subsequence of the answer's tokens and the passage's, over the answer's length (ROUGE-L precision,
rouge_score's tokenizer, no stemmer, as eval.metrics scores answers), maximised over the passages.
An answer copied from a passage scores 1; one in the model's own words scores near its share of
common words. `lcs_length` is the one LCS of the project (eval.metrics' ROUGE-L uses it).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

SUPPORTED = 0.5  # at least half of the answer made of one source's words


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel (Hyyro 2004):
    about len(a) * len(b) / 64 machine-word steps. rouge_score fills a pure-Python table instead,
    which takes minutes for a pair of 20,000-word texts."""
    masks: dict[str, int] = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & masks.get(token, 0)
        v = (v + u) | (v - u)
    return len(b) - bin(v & full).count("1")


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=False)


def tokens(text: str) -> list[str]:
    """rouge_score's tokens: lowercased words and numbers, punctuation dropped."""
    return _tokenizer().tokenize(text or "")


def lexical_support(answer: str, passages: Sequence[str]) -> tuple[float, Optional[int]]:
    """(ROUGE-L precision of `answer` against its best passage, that passage's index); (0.0, None)
    for an empty answer or no passage."""
    answer_tokens = tokens(answer)
    if not answer_tokens or not passages:
        return 0.0, None
    scores = [lcs_length(tokens(p), answer_tokens) / len(answer_tokens) for p in passages]
    best = max(range(len(scores)), key=scores.__getitem__)
    return scores[best], best
