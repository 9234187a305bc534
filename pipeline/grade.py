"""The agent's calibrated grade: the probability that the passages a round found answer its question.

    from pipeline.grade import GradeCalibration, grade_features
    calibration = GradeCalibration.load("results/answerability/grade-calibration.json")
    p = calibration.probability(grade_features(nodes))      # nodes: one round's reranked passages
    p >= calibration.threshold                                # answer; below it, the agent refuses

Features of a round, read from the reranked passages' metadata (no second pass over the candidates):
`ql` the best query-likelihood score as a log-probability per question token (log of `rerank_score`,
the geometric-mean token probability of the question given the passage) and `dense` the best
retrieval score (the embedder's cosine). A logistic regression on them (`fit_logistic`, fitted by
`python -m eval.answerability --fit` on the dev answerability set: in-KB questions 1, out-of-KB 0)
turns them into a probability; `expected_calibration_error` and `reliability_bins` check it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.errors import UserFacingError

FEATURES = ("ql", "dense")
_FLOOR = 1e-6  # a zero probability would make log(score) infinite


class GradeError(UserFacingError, ValueError):
    """A calibration file that cannot be used; the message says how to make a good one."""


def features_of(rerank_scores: Sequence[Any], retrieval_scores: Sequence[Any]) -> Optional[dict[str, float]]:
    """The features of a round's kept passages' scores (None entries skipped), or None when there is
    no rerank score (no reranker ran)."""
    ql = [float(s) for s in rerank_scores if s is not None]
    if not ql:
        return None
    dense = [float(s) for s in retrieval_scores if s is not None]
    return {"ql": math.log(max(max(ql), _FLOOR)), "dense": max(dense) if dense else 0.0}


def grade_features(nodes: Sequence[Any]) -> Optional[dict[str, float]]:
    """The round's features, read from its passages' metadata (see `features_of`)."""
    return features_of([n.node.metadata.get("rerank_score") for n in nodes], [n.node.metadata.get("retrieval_score") for n in nodes])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class GradeCalibration:
    """A fitted logistic grade: P(answerable) = sigmoid(intercept + sum(coef[f] * feature[f]))."""

    intercept: float
    coef: dict[str, float]
    threshold: float  # answer at or above it; chosen on dev (see `choose_threshold`)
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what it was fitted on, for the record

    def probability(self, features: Mapping[str, float]) -> float:
        missing = [f for f in self.coef if f not in features]
        if missing:
            raise GradeError(f"the grade needs features {missing}; the round gave {sorted(features)}")
        return _sigmoid(self.intercept + sum(w * float(features[f]) for f, w in self.coef.items()))

    def save(self, path: str | Path) -> None:
        from pipeline.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GradeCalibration":
        path = Path(path)
        if not path.is_file():
            raise GradeError(f"agent.calibration {str(path)!r} does not exist; fit one with `python -m eval.answerability --split dev --fit {path}` or set agent.calibration=null (no refusals)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            made = cls(intercept=float(raw["intercept"]), coef={str(k): float(v) for k, v in raw["coef"].items()}, threshold=float(raw["threshold"]), fitted_on=dict(raw.get("fitted_on", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise GradeError(f"agent.calibration {str(path)!r} is not a grade calibration ({error}); fit it again with `python -m eval.answerability --split dev --fit {path}`") from error
        unknown = [f for f in made.coef if f not in FEATURES]
        if unknown or not 0.0 <= made.threshold <= 1.0:
            raise GradeError(f"agent.calibration {str(path)!r}: features {unknown} unknown (known: {FEATURES}) or threshold {made.threshold} outside [0, 1]; fit it again with `python -m eval.answerability --split dev --fit {path}`")
        return made


def fit_logistic(rows: Sequence[Mapping[str, float]], labels: Sequence[int], *, features: Sequence[str] = FEATURES, l2: float = 1e-2) -> tuple[float, dict[str, float]]:
    """(intercept, coefficients) of an L2-regularised logistic regression (Newton's method, the
    intercept not penalised) of `labels` (1 answerable, 0 not) on the named features."""
    import numpy as np

    if len(rows) != len(labels) or not rows:
        raise GradeError(f"fit_logistic needs as many labels as rows and at least one row; got {len(rows)} rows and {len(labels)} labels")
    if len(set(int(y) for y in labels)) < 2:
        raise GradeError("fit_logistic needs both answerable (1) and unanswerable (0) questions")
    x = np.array([[1.0] + [float(r[f]) for f in features] for r in rows])
    y = np.array([float(v) for v in labels])
    penalty = np.diag([0.0] + [l2] * len(features))
    w = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w = w - step
        if float(np.abs(step).max()) < 1e-10:
            break
    return float(w[0]), {f: float(v) for f, v in zip(features, w[1:])}


def reliability_bins(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of the predicted probability: each bin's count, mean prediction and the
    share of its questions that were answerable (a reliability diagram's points)."""
    out = []
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(p, y) for p, y in zip(probabilities, labels) if low <= p < high or (b == bins - 1 and p == 1.0)]
        if members:
            out.append({"low": low, "high": high, "count": len(members), "mean_p": sum(p for p, _ in members) / len(members), "answerable": sum(y for _, y in members) / len(members)})
    return out


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """The count-weighted mean gap between a bin's mean prediction and its answerable share."""
    total = len(probabilities)
    if not total:
        return 0.0
    return sum(b["count"] / total * abs(b["mean_p"] - b["answerable"]) for b in reliability_bins(probabilities, labels, bins))


def choose_threshold(probabilities: Sequence[float], labels: Sequence[int], *, max_refused_answerable: float) -> float:
    """The highest threshold (most refusals of unanswerable questions) that refuses at most
    `max_refused_answerable` of the answerable ones (refused: probability below the threshold)."""
    answerable = sorted(p for p, y in zip(probabilities, labels) if y)
    if not answerable:
        raise GradeError("choose_threshold needs answerable questions")
    allowed = int(math.floor(max_refused_answerable * len(answerable)))  # how many may fall below
    return answerable[allowed] if allowed < len(answerable) else 1.0
