"""Retrieval metrics (recall@k, MRR@k, nDCG@k, hit rate) and bootstrap statistics: pure NumPy.

They sit in the core because training selects checkpoints with them (the reranker's and rewriter's
reports, the judged rewrites) and evaluation (eval/) reports them; eval.metrics re-exports them
beside the answer metrics. Every metric is per question, so one bootstrap routine gives 95%
intervals for all of them (resampling questions with a seeded generator), and one paired routine
compares two systems on the same questions.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
DEPTH = max(DEFAULT_KS)  # passages a retrieval run ranks: enough for every k


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


def bootstrap_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """`samples` resamples (with replacement) of range(n), shape (samples, n); seeded."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one item; got 0")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    samples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over items resampled with replacement.

    `statistic` receives an index array into the items, so corpus-level metrics (BLEU) are
    recomputed on each resample rather than averaged."""
    draws = [statistic(idx) for idx in bootstrap_indices(n, samples, seed)]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_ci(values: Sequence[float], *, samples: int = 1000, seed: int = 42) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean of per-question values."""
    array = np.asarray(values, dtype=float)
    means = array[bootstrap_indices(len(array), samples, seed)].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap_test(
    n: int,
    statistic_a: Callable[[np.ndarray], float],
    statistic_b: Callable[[np.ndarray], float],
    *,
    samples: int = 1000,
    seed: int = 42,
) -> dict[str, float]:
    """Paired bootstrap of a - b over the same resampled questions.

    Returns the observed difference, its 95% interval, and a two-sided p-value (twice the smaller
    share of resamples on either side of zero, at most 1)."""
    everything = np.arange(n)
    observed = statistic_a(everything) - statistic_b(everything)
    diffs = np.array([statistic_a(idx) - statistic_b(idx) for idx in bootstrap_indices(n, samples, seed)])
    low, high = np.percentile(diffs, [2.5, 97.5])
    p_value = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"diff": float(observed), "ci95_low": float(low), "ci95_high": float(high), "p_value": p_value}


def paired_mean_test(a: Sequence[float], b: Sequence[float], *, samples: int = 1000, seed: int = 42) -> dict[str, float]:
    """Paired bootstrap of mean(a) - mean(b), where a[i] and b[i] score the same question (per-query
    MRR@10 of two retrievers, ROUGE-L of two runs' answers); returns what paired_bootstrap_test does."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_mean_test needs one score per question in both, in the same order; got shapes {a.shape} and {b.shape}")
    return paired_bootstrap_test(len(a), lambda idx: float(a[idx].mean()), lambda idx: float(b[idx].mean()), samples=samples, seed=seed)


# --------------------------------------------------------------------------------------------
# retrieval metrics (per query; the gold is a set of relevant ids)
# --------------------------------------------------------------------------------------------


def first_relevant_rank(ranked_ids: Sequence[Hashable], relevant: set[Hashable] | frozenset) -> int | None:
    """1-based rank of the first relevant id, None when none was retrieved."""
    for rank, node_id in enumerate(ranked_ids, start=1):
        if node_id in relevant:
            return rank
    return None


def recall_at_k(ranked_ids: Sequence[Hashable], relevant: set[Hashable] | frozenset, k: int) -> float:
    if not relevant:
        raise ValueError("recall needs at least one relevant id for the query")
    return len(set(ranked_ids[:k]) & set(relevant)) / len(relevant)


def mrr_at_k(ranked_ids: Sequence[Hashable], relevant: set[Hashable] | frozenset, k: int = 10) -> float:
    rank = first_relevant_rank(ranked_ids[:k], relevant)
    return 0.0 if rank is None else 1.0 / rank


def ndcg_at_k(ranked_ids: Sequence[Hashable], relevant: set[Hashable] | frozenset, k: int = 10) -> float:
    """Binary-relevance nDCG@k."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, node_id in enumerate(ranked_ids[:k], start=1) if node_id in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def hit_at_k(ranked_ids: Sequence[Hashable], relevant: set[Hashable] | frozenset, k: int) -> float:
    return 1.0 if set(ranked_ids[:k]) & set(relevant) else 0.0


def retrieval_per_query(
    ranked: Sequence[Sequence[Hashable]],
    relevant: Sequence[set[Hashable] | frozenset],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, list[float]]:
    """Per-query values of recall@k (each k), MRR@10, nDCG@10 and hit rate (any relevant retrieved)."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists for {len(relevant)} relevance sets; they must pair up")
    values: dict[str, list[float]] = {f"recall@{k}": [] for k in ks}
    values.update({"mrr@10": [], "ndcg@10": [], "hit_rate": []})
    for ids, gold in zip(ranked, relevant):
        for k in ks:
            values[f"recall@{k}"].append(recall_at_k(ids, gold, k))
        values["mrr@10"].append(mrr_at_k(ids, gold, 10))
        values["ndcg@10"].append(ndcg_at_k(ids, gold, 10))
        values["hit_rate"].append(hit_at_k(ids, gold, len(ids)))
    return values


def summarize(per_query: dict[str, list[float]], *, samples: int = 1000, seed: int = 42) -> dict[str, object]:
    """Means of per-query metrics plus their bootstrap 95% intervals under "ci95"."""
    summary: dict[str, object] = {name: float(np.mean(values)) for name, values in per_query.items()}
    summary["ci95"] = {name: list(mean_ci(values, samples=samples, seed=seed)) for name, values in per_query.items()}
    summary["n"] = len(next(iter(per_query.values()))) if per_query else 0
    return summary
