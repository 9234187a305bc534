"""Metrics: answer metrics (here) beside the retrieval metrics and bootstrap statistics of pipeline.metrics.

Every metric here is computed per question where it can be, so that one bootstrap routine gives
95% confidence intervals for all of them (resampling questions with a seeded generator), and one
paired routine compares two systems on the same questions.

Answer metrics (`score_predictions` is the one-call API):

    from eval.metrics import score_predictions
    scores = score_predictions(predictions, references, bertscore_model=None)   # no model loaded
    scores["bleu4"], scores["ci95"]["bleu4"]

- BLEU-4: corpus BLEU, sacrebleu defaults (13a tokenizer, exp smoothing), on a 0-1 scale. Each
  sentence's sufficient statistics (lengths, n-gram matches and totals) are kept, so a bootstrap
  resample sums rows instead of re-tokenizing: 1000 resamples take milliseconds.
- ROUGE-L: mean F1 of `rouge_score` without stemmer (the reference experiment's setting).
- Exact match (lower-cased, stripped), its SQuAD-normalized variant, and SQuAD token F1.
- BERTScore F1 (`bert-score`, no baseline rescale) with `BertScoreModel`, which records the model
  it actually used; see there for the offline fallback.

The lexical metrics are computed through HF `evaluate` modules that ship with the project
(`eval/evaluate_modules/<name>/<name>.py`, loaded from their local path and run together with
`evaluate.combine`), so they work offline and can be used on their own:
`evaluate.load("eval/evaluate_modules/ragft_bleu").compute(predictions=..., references=...)`.
"""

from __future__ import annotations

import functools
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.metrics import (
    bootstrap_ci,
    paired_bootstrap_test,
)
from pipeline.models import ModelNotFoundError, check_model_source, require_safetensors, resolve_device, resolve_model
from pipeline.support import lcs_length

# --------------------------------------------------------------------------------------------
# answer metrics: per question, so that the bootstrap can resample them
# --------------------------------------------------------------------------------------------

# Order of the answer metrics in results and tables; BLEU-4 is the primary metric because it is
# the reference experiment's headline number.
ANSWER_METRICS = ("bleu4", "rougeL", "bertscore_f1", "exact_match", "exact_match_squad", "token_f1")
PRIMARY_METRIC = "bleu4"
MAX_NGRAM_ORDER = 4
# Columns of `bleu_statistics`: hypothesis length, reference length, matches of 1..4-grams,
# totals of 1..4-grams (sacrebleu's own layout of sufficient statistics).
BLEU_STAT_COLUMNS = ("sys_len", "ref_len", *(f"correct{n}" for n in range(1, 5)), *(f"total{n}" for n in range(1, 5)))

EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
LEXICAL_MODULES = ("ragft_bleu", "ragft_rouge", "ragft_exact_match", "ragft_token_f1")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; they must pair up one to one")
    for kind, texts in (("prediction", predictions), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{kind} {i} is {type(text).__name__}, not str; convert it (missing answers are '')")


def normalize_answer_squad(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after lower-casing and stripping surrounding whitespace."""
    return float(prediction.strip().lower() == reference.strip().lower())


def exact_match_squad(prediction: str, reference: str) -> float:
    """1.0 when the SQuAD-normalized texts are equal."""
    return float(normalize_answer_squad(prediction) == normalize_answer_squad(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalized whitespace tokens (bag of tokens, counts clipped).

    Two empty answers agree (1.0); one empty answer against a non-empty one scores 0.0."""
    pred_tokens = normalize_answer_squad(prediction).split()
    ref_tokens = normalize_answer_squad(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=1)
def _sacrebleu_metric() -> Any:
    from sacrebleu.metrics import BLEU

    # sacrebleu's defaults, spelled out: they are what the reference figures were computed with.
    return BLEU(tokenize="13a", smooth_method="exp", lowercase=False, max_ngram_order=MAX_NGRAM_ORDER)


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sentence BLEU sufficient statistics, shape (n, 10), columns `BLEU_STAT_COLUMNS`.

    Summing rows and calling `bleu_from_statistics` gives exactly sacrebleu's corpus BLEU of those
    sentences, because corpus BLEU only depends on these sums."""
    _check_pairs(predictions, references)
    bleu = _sacrebleu_metric()
    rows = np.zeros((len(predictions), 2 + 2 * MAX_NGRAM_ORDER), dtype=np.int64)
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        # corpus_score on one sentence is sacrebleu's public way to its raw counts.
        score = bleu.corpus_score([prediction], [[reference]])
        rows[i] = [score.sys_len, score.ref_len, *score.counts, *score.totals]
    return rows


def bleu_from_statistics(totals: Sequence[float] | np.ndarray) -> float:
    """Corpus BLEU on a 0-1 scale from summed statistics (sacrebleu's formula and smoothing)."""
    from sacrebleu.metrics import BLEU

    stats = [int(v) for v in totals]
    if len(stats) != 2 + 2 * MAX_NGRAM_ORDER:
        raise ValueError(f"BLEU statistics need {2 + 2 * MAX_NGRAM_ORDER} values ({', '.join(BLEU_STAT_COLUMNS)}); got {len(stats)}")
    score = BLEU.compute_bleu(
        correct=stats[2 : 2 + MAX_NGRAM_ORDER],
        total=stats[2 + MAX_NGRAM_ORDER :],
        sys_len=stats[0],
        ref_len=stats[1],
        smooth_method="exp",
        max_ngram_order=MAX_NGRAM_ORDER,
    )
    return score.score / 100.0


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu 13a) on a 0-1 scale."""
    return bleu_from_statistics(bleu_statistics(predictions, references).sum(axis=0))


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-pair ROUGE-L F1 of `rouge_score`, no stemmer (the reference experiment's setting): its
    tokenizer and formula, with the LCS length computed by `pipeline.support.lcs_length` (the same integer)."""
    from rouge_score import scoring, tokenizers

    _check_pairs(predictions, references)
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    values = []
    for prediction, reference in zip(predictions, references):
        target_tokens, prediction_tokens = tokenizer.tokenize(reference), tokenizer.tokenize(prediction)
        if not target_tokens or not prediction_tokens:
            values.append(0.0)
            continue
        lcs = lcs_length(target_tokens, prediction_tokens)
        values.append(scoring.fmeasure(lcs / len(prediction_tokens), lcs / len(target_tokens)))
    return values


@functools.lru_cache(maxsize=1)
def load_lexical_metrics() -> Any:
    """The project's `evaluate` modules for the lexical metrics, combined into one.

    Loaded from their folders in this package (never from the hub) and kept in memory, so they
    work offline and leave no Arrow files behind."""
    import evaluate

    modules = {name: evaluate.load(str(EVALUATE_MODULES_DIR / name), keep_in_memory=True) for name in LEXICAL_MODULES}
    return evaluate.combine(modules)


def lexical_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Aggregate and per-question values of BLEU-4, ROUGE-L, exact match (both) and token F1,
    computed by the combined `evaluate` modules."""
    _check_pairs(predictions, references)
    if not predictions:
        raise ValueError("no predictions to score; the file or split is empty")
    return load_lexical_metrics().compute(predictions=list(predictions), references=list(references))


# --------------------------------------------------------------------------------------------
# BERTScore
# --------------------------------------------------------------------------------------------

DEFAULT_BERTSCORE_MODEL = "roberta-large"
FALLBACK_BERTSCORE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Layers bert-score cannot look up for these models (its table covers roberta-large & co);
# all-MiniLM-L6-v2 has 6 layers and its last one is the one sentence-transformers pools.
EXTRA_BERTSCORE_LAYERS = {FALLBACK_BERTSCORE_MODEL: 6}


@dataclass(frozen=True)
class ResolvedBertScoreModel:
    name: str  # the model as reported in results and tables
    path: str  # what transformers loads: a local folder, or a hub id when downloads are allowed
    num_layers: int
    requested: str
    fallback_reason: str | None = None  # set when `name` is not what was requested

    def describe(self) -> str:
        text = f"{self.name} (layer {self.num_layers}, no baseline rescale)"
        if self.fallback_reason:
            text += f"; {self.requested} was requested but {self.fallback_reason}"
        return text


def _locate_model(reference: str) -> str:
    """A local folder or downloadable id for `reference`, or ModelNotFoundError."""
    return resolve_model(reference)


def _model_layers(reference: str, path: str) -> int:
    from bert_score.utils import model2layers

    if reference in model2layers:
        return int(model2layers[reference])
    if reference in EXTRA_BERTSCORE_LAYERS:
        return EXTRA_BERTSCORE_LAYERS[reference]
    from transformers import AutoConfig

    # An unknown model: its last layer (bert-score's tuned layers exist only for known models).
    config = AutoConfig.from_pretrained(path)
    layers = getattr(config, "num_hidden_layers", None)
    if not layers:
        raise ValueError(f"cannot tell how many layers BERTScore model {reference!r} has; set eval.bertscore_num_layers")
    return int(layers)


def resolve_bertscore_model(
    reference: str = DEFAULT_BERTSCORE_MODEL, *, num_layers: int | None = None, allow_fallback: bool = True
) -> ResolvedBertScoreModel:
    """Find the BERTScore model on this machine. When `reference` cannot be loaded and fallback is
    allowed, use the bundled MiniLM instead, print one line saying so, and record the reason."""
    try:
        path = _locate_model(reference)
    except ModelNotFoundError as exc:
        if not allow_fallback or reference == FALLBACK_BERTSCORE_MODEL:
            raise
        path = _locate_model(FALLBACK_BERTSCORE_MODEL)
        reason = "it was not found on this machine (no local folder, not in the hub cache) and could not be downloaded"
        resolved = ResolvedBertScoreModel(
            FALLBACK_BERTSCORE_MODEL, path, EXTRA_BERTSCORE_LAYERS[FALLBACK_BERTSCORE_MODEL], reference, reason
        )
        print(f"BERTScore: falling back to {resolved.name} (layer {resolved.num_layers}, no baseline rescale); {exc}", file=sys.stderr)
        return resolved
    return ResolvedBertScoreModel(reference, path, num_layers or _model_layers(reference, path), reference)


class BertScoreModel:
    """BERTScore F1 per pair with `bert-score` (no idf, no baseline rescale).

    The constructor only stores settings; the model is resolved and loaded on first use and kept
    for later calls. `model_for_bertscore` names the model actually used, so that results and
    table headers never hide a fallback."""

    def __init__(
        self,
        model: str = DEFAULT_BERTSCORE_MODEL,
        *,
        num_layers: int | None = None,
        batch_size: int = 32,
        device: str = "auto",
        allow_fallback: bool = True,
        allow_pickle: bool = False,
    ) -> None:
        if not model or not model.strip():
            raise ValueError(f"BertScoreModel(model={model!r}): give a hub id or a local folder, e.g. {DEFAULT_BERTSCORE_MODEL!r}")
        if num_layers is not None and num_layers <= 0:
            raise ValueError(f"BertScoreModel(num_layers={num_layers}): must be a positive layer number, or None for the model's default")
        if batch_size <= 0:
            raise ValueError(f"BertScoreModel(batch_size={batch_size}): must be > 0")
        self.model = model
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.device = device
        self.allow_fallback = allow_fallback
        self.allow_pickle = allow_pickle
        self._resolved: ResolvedBertScoreModel | None = None
        self._scorer: Any = None

    @classmethod
    def from_config(cls, config: Any) -> "BertScoreModel":
        """The `eval` section's BERTScore settings, under the `security` section's loading rules."""
        settings = config.eval
        return cls(
            check_model_source(config, settings.bertscore_model, "eval.bertscore_model"),
            num_layers=settings.bertscore_num_layers,
            batch_size=settings.bertscore_batch_size,
            allow_fallback=settings.bertscore_fallback,
            allow_pickle=config.security.allow_pickle_weights,
        )

    @property
    def resolved(self) -> ResolvedBertScoreModel:
        if self._resolved is None:
            self._resolved = resolve_bertscore_model(self.model, num_layers=self.num_layers, allow_fallback=self.allow_fallback)
        return self._resolved

    @property
    def model_for_bertscore(self) -> str:
        return self.resolved.name

    def info(self) -> dict[str, Any]:
        """What to store beside BERTScore values: model used, layer, requested model, fallback."""
        resolved = self.resolved
        return {
            "model": resolved.name,
            "layer": resolved.num_layers,
            "requested": resolved.requested,
            "fallback_reason": resolved.fallback_reason,
            "rescale_with_baseline": False,
            "idf": False,
        }

    def _load(self) -> Any:
        if self._scorer is None:
            import bert_score


            resolved = self.resolved
            # bert-score calls from_pretrained itself, without use_safetensors: check the folder first
            require_safetensors(resolved.path, f"BERTScore model {resolved.name!r}", allow_pickle=self.allow_pickle)
            self._scorer = bert_score.BERTScorer(
                model_type=resolved.path,
                num_layers=resolved.num_layers,
                batch_size=self.batch_size,
                device=resolve_device(self.device),
                rescale_with_baseline=False,
                idf=False,
            )
        return self._scorer

    def score(self, predictions: Sequence[str], references: Sequence[str], *, verbose: bool = False) -> np.ndarray:
        """BERTScore F1 of each (prediction, reference) pair."""
        _check_pairs(predictions, references)
        f1 = np.zeros(len(predictions))
        # An empty side scores 0, as bert-score itself rules; they are kept away from bert-score,
        # whose empty-sentence path calls a tokenizer method transformers 5 no longer has.
        keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
        if keep:
            _, _, scored = self._load().score(
                [predictions[i] for i in keep], [references[i] for i in keep], verbose=verbose, batch_size=self.batch_size
            )
            f1[keep] = scored.detach().cpu().numpy().astype(float)
        return f1


# --------------------------------------------------------------------------------------------
# one system's answer scores, their intervals, and paired tests between systems
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # arrays inside: identity equality, no elementwise surprises
class AnswerScores:
    """Per-question values of every answer metric of one system, the input of every bootstrap.

    `per_question` maps metric name -> array of n values whose mean is the metric; BLEU-4 is
    corpus-level, so it is kept as per-question sufficient statistics instead."""

    bleu_stats: np.ndarray
    per_question: dict[str, np.ndarray]
    bertscore: dict[str, Any] | None = None  # BertScoreModel.info() when BERTScore was computed
    questions: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def n(self) -> int:
        return int(self.bleu_stats.shape[0])

    @property
    def metric_names(self) -> list[str]:
        return [name for name in ANSWER_METRICS if name == "bleu4" or name in self.per_question]

    @property
    def model_for_bertscore(self) -> str | None:
        return self.bertscore["model"] if self.bertscore else None

    def statistic(self, name: str) -> Callable[[np.ndarray], float]:
        """The metric as a function of an index array (the bootstrap's resample)."""
        if name == "bleu4":
            stats = self.bleu_stats
            return lambda idx: bleu_from_statistics(stats[idx].sum(axis=0))
        if name not in self.per_question:
            raise KeyError(f"metric {name!r} was not computed; available: {', '.join(self.metric_names)}")
        values = self.per_question[name]
        return lambda idx: float(values[idx].mean())

    def value(self, name: str) -> float:
        return self.statistic(name)(np.arange(self.n))

    def subset(self, indices: Sequence[int]) -> "AnswerScores":
        """The same scores on a subset / reordering of the questions (used to align systems)."""
        idx = np.asarray(indices, dtype=int)
        questions = tuple(self.questions[i] for i in idx) if self.questions is not None else None
        return AnswerScores(self.bleu_stats[idx], {k: v[idx] for k, v in self.per_question.items()}, self.bertscore, questions)

    def summary(self, *, samples: int = 1000, seed: int = 42) -> dict[str, Any]:
        """Metric values, n, bootstrap 95% intervals under "ci95", the BERTScore model used."""
        result: dict[str, Any] = {name: self.value(name) for name in self.metric_names}
        result["n"] = self.n
        # Same seed for every metric: each interval comes from the same resampled question sets.
        result["ci95"] = {name: list(bootstrap_ci(self.n, self.statistic(name), samples=samples, seed=seed)) for name in self.metric_names}
        result["model_for_bertscore"] = self.model_for_bertscore
        result["primary_metric"] = PRIMARY_METRIC
        return result


def compute_answer_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore: BertScoreModel | None = None,
    questions: Sequence[str] | None = None,
) -> AnswerScores:
    """Per-question values of every answer metric (BERTScore only when a model is given)."""
    lexical = lexical_scores(predictions, references)
    per_question = {
        "rougeL": np.asarray(lexical["rougeL_per_question"], dtype=float),
        "exact_match": np.asarray(lexical["exact_match_per_question"], dtype=float),
        "exact_match_squad": np.asarray(lexical["exact_match_squad_per_question"], dtype=float),
        "token_f1": np.asarray(lexical["token_f1_per_question"], dtype=float),
    }
    info = None
    if bertscore is not None:
        per_question["bertscore_f1"] = bertscore.score(predictions, references)
        info = bertscore.info()
    stats = np.asarray(lexical["bleu4_statistics"], dtype=np.int64).reshape(len(predictions), -1)
    return AnswerScores(stats, per_question, info, tuple(questions) if questions is not None else None)


def score_predictions(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | BertScoreModel | None = DEFAULT_BERTSCORE_MODEL,
    allow_fallback: bool = True,
    samples: int = 1000,
    seed: int = 42,
) -> dict[str, Any]:
    """Every answer metric with bootstrap 95% intervals, evaluator style:

    {"bleu4", "rougeL", "bertscore_f1", "exact_match", "exact_match_squad", "token_f1": float,
     "n": int, "ci95": {metric: [low, high]}, "model_for_bertscore": str | None,
     "primary_metric": "bleu4"}

    `bertscore_model=None` skips BERTScore (no model is loaded); a `BertScoreModel` is reused."""
    scorer = bertscore_model if isinstance(bertscore_model, BertScoreModel) or bertscore_model is None else BertScoreModel(
        bertscore_model, allow_fallback=allow_fallback
    )
    return compute_answer_scores(predictions, references, bertscore=scorer).summary(samples=samples, seed=seed)


def paired_answer_tests(
    system: AnswerScores, baseline: AnswerScores, *, samples: int = 1000, seed: int = 42
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of system - baseline for every metric both have, on the same questions
    (the caller aligns them: row i of both must be the same question)."""
    if system.n != baseline.n:
        raise ValueError(f"paired test needs the same questions; got {system.n} vs {baseline.n} rows")
    if system.questions is not None and baseline.questions is not None and system.questions != baseline.questions:
        raise ValueError("paired test needs the same questions in the same order; align them with AnswerScores.subset first")
    shared = [name for name in system.metric_names if name in baseline.metric_names]
    return {
        name: paired_bootstrap_test(system.n, system.statistic(name), baseline.statistic(name), samples=samples, seed=seed)
        for name in shared
    }


def latency_summary(timings: Sequence[Mapping[str, float]], *, total_key: str = "total") -> dict[str, Any]:
    """Per-question stage timings (seconds) -> p50/p90/mean of the total and p50/mean per stage.

    A question's total is its `total_key` entry when present, else the sum of its stages."""
    if not timings:
        raise ValueError("no timings to summarize")
    stages: dict[str, list[float]] = {}
    totals = []
    for row in timings:
        for stage, seconds in row.items():
            if stage != total_key:
                stages.setdefault(stage, []).append(float(seconds))
        totals.append(float(row[total_key]) if total_key in row else float(sum(v for k, v in row.items() if k != total_key)))
    total = np.asarray(totals)
    return {
        "n": len(totals),
        "p50_s": float(np.percentile(total, 50)),
        "p90_s": float(np.percentile(total, 90)),
        "mean_s": float(total.mean()),
        "stages": {stage: {"p50_s": float(np.percentile(v, 50)), "mean_s": float(np.mean(v)), "n": len(v)} for stage, v in stages.items()},
    }
