"""Cross-encoder reranking as a LlamaIndex node postprocessor.

    from pipeline import load_config
    from rerank import CrossEncoderReranker
    reranker = CrossEncoderReranker.from_config(load_config("tiny"))   # cheap: nothing loaded yet
    top = reranker.postprocess_nodes(retrieved_nodes, query_str="What is a B-tree?")
    top[0].score, top[0].node.metadata["retrieval_rank"], top[0].node.metadata["rerank_score"]

A cross-encoder reads the question and one passage together, so it sees interactions a
bi-encoder's two separate vectors cannot; it is too slow to search a whole corpus, which is why it
reorders the few dozen candidates a retriever returns. The scored question is always the ORIGINAL
one (`QueryBundle.query_str`): a rewriter (HyDE) only adds `custom_embedding_strs` for the
retrievers, and a hypothetical answer must never be what passages are judged against.

Each returned node is a copy whose metadata records where it came from and what the reranker
said: `retrieval_rank` (1-based position in the input list), `retrieval_score` (the retriever's
score, None when it had none), `rerank_score` (sigmoid of the cross-encoder logit, in [0, 1], the
value the agent loop compares with its threshold), `rerank_logit` (the raw logit, which orders the
nodes: sigmoid saturates to exactly 1.0 for confident pairs and would leave ties) and
`rerank_rank` (1-based). The returned `NodeWithScore.score` is `rerank_score`. These keys are
excluded from the embedding and LLM metadata modes so they never leak into prompts.

With `retrieval_weight` w > 0 the order is an interpolation of the two stages (Nogueira et al.'s
and most production rerankers' practice when the cross-encoder is weak or out of domain):
`rerank_combined` = (1 - w) * minmax(logit) + w * minmax(retrieval score), both min-max normalized
over the query's candidates. A small cross-encoder trained on ~1k questions carries signal the
retriever lacks but is noisy on its own; interpolation keeps the retriever's strong agreements.
w = 0 orders by the cross-encoder alone, w = 1 keeps the retriever's order.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, List, Literal, Optional, Sequence

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from pipeline.models import check_model_source

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import CrossEncoder

    from pipeline.config import Config

RETRIEVAL_RANK = "retrieval_rank"
RETRIEVAL_SCORE = "retrieval_score"
RERANK_SCORE = "rerank_score"
RERANK_LOGIT = "rerank_logit"
RERANK_RANK = "rerank_rank"
RERANK_COMBINED = "rerank_combined"
RERANK_METADATA_KEYS = (RETRIEVAL_RANK, RETRIEVAL_SCORE, RERANK_SCORE, RERANK_LOGIT, RERANK_RANK, RERANK_COMBINED)


def sigmoid(x: float) -> float:
    # math.exp overflows for x < -709; both branches are exact where they are used
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    # all equal: every candidate is as good as the best (the convention of pipeline.retrieve's fusion)
    return [(v - low) / (high - low) if high > low else 1.0 for v in values]


def interpolated_order(logits: Sequence[float], retrieval_scores: Sequence[Optional[float]], retrieval_weight: float) -> tuple[list[int], list[float]]:
    """Candidate indices best first, and each candidate's combined score:
    (1 - w) * minmax(logit) + w * minmax(retrieval score). A list with a missing retrieval score
    (a retriever that gives none) uses its positions instead: 1 for the first, 0 for the last.
    Stable: ties keep the retriever's order. Pure, shared with rerank.evaluate."""
    if not 0.0 <= retrieval_weight <= 1.0:
        raise ValueError(f"retrieval_weight={retrieval_weight!r} must lie in [0, 1] (0: cross-encoder order, 1: retriever order)")
    n = len(logits)
    if n == 0:
        return [], []
    if retrieval_weight == 0.0:
        combined = [float(x) for x in logits]  # the cross-encoder alone: order by the raw logit
    else:
        first = [float(s) for s in retrieval_scores] if all(s is not None for s in retrieval_scores) else [float(n - i) for i in range(n)]
        combined = [(1.0 - retrieval_weight) * c + retrieval_weight * r for c, r in zip(_minmax([float(x) for x in logits]), _minmax(first))]
    order = sorted(range(n), key=lambda i: -combined[i])
    return order, combined


class PairScoringReranker(BaseNodePostprocessor):
    """What every reranker of (question, passage) pairs shares: the logit cache, the
    interpolation with the retriever's scores, the metadata of each kept node. A subclass says how
    a model loads (`load`), how it scores pairs the cache lacks (`_score_uncached`) and how a
    logit maps to the [0, 1] `rerank_score` the agent loop grades (`probability`)."""

    model: str = Field(description="The scoring model's folder or hub id.")
    top_n: int = Field(default=5, gt=0, description="Nodes kept after reranking.")
    batch_size: int = Field(default=32, gt=0, description="(question, passage) pairs scored per forward pass.")
    max_length: int = Field(default=256, gt=0, description="Maximum tokens of a (question, passage) pair; longer passages are truncated.")
    retrieval_weight: float = Field(default=0.0, ge=0.0, le=1.0, description="Weight of the retriever's (min-max normalized) score in the order; 0: the reranker alone (see the module doc).")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    show_progress: bool = Field(default=False, description="Show a progress bar while scoring (useful for long candidate lists).")
    allow_pickle_weights: bool = Field(default=False, description="Read pickle weights when the model ships no safetensors (security.allow_pickle_weights).")
    cache_size: int = Field(default=50_000, ge=0, description="(question, passage) logits kept, least recently used dropped; systems that rerank the same candidates (ablations, retries) score each pair once.")

    _model: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _cache: Any = PrivateAttr(default_factory=OrderedDict)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _score_uncached(self, question: str, passages: list[str]) -> "np.ndarray":  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def probability(logit: float) -> float:
        return sigmoid(logit)

    def score_pairs(self, question: str, passages: Sequence[str]) -> "np.ndarray":
        """Raw logits of (question, passage) for each passage; pairs scored before come from the cache."""
        import numpy as np

        if not passages:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            known = {p: self._cache[(question, p)] for p in set(passages) if (question, p) in self._cache}
        missing = list(dict.fromkeys(p for p in passages if p not in known))
        if missing:
            scores = self._score_uncached(question, missing)
            known.update(zip(missing, (float(x) for x in scores)))
            if self.cache_size:
                with self._lock:
                    for passage in missing:
                        self._cache[(question, passage)] = known[passage]
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return np.array([known[p] for p in passages], dtype=np.float32)

    # ----------------------------------------------------------------------------------------
    # LlamaIndex postprocessor
    # ----------------------------------------------------------------------------------------

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(f"{self.class_name()} needs the question: pass query_bundle=QueryBundle(question) or query_str=question")
        question = query_bundle.query_str
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{self.class_name()}: the question is empty ({question!r}); pass the user's original question")
        if not nodes:
            return []
        passages = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        logits = self.score_pairs(question, passages)
        order, combined = interpolated_order(logits, [n.score for n in nodes], self.retrieval_weight)
        out: list[NodeWithScore] = []
        for new_rank, i in enumerate(order[: self.top_n], start=1):
            original = nodes[i]
            logit = float(logits[i])
            probability = self.probability(logit)
            metadata = dict(original.node.metadata)
            metadata.update(
                {
                    RETRIEVAL_RANK: i + 1,
                    RETRIEVAL_SCORE: None if original.score is None else float(original.score),
                    RERANK_SCORE: probability,
                    RERANK_LOGIT: logit,
                    RERANK_RANK: new_rank,
                    RERANK_COMBINED: combined[i],
                }
            )
            # a copy with fresh metadata and exclusion lists: the caller's node is untouched
            node = original.node.model_copy(
                update={
                    "metadata": metadata,
                    "excluded_embed_metadata_keys": _with_keys(original.node.excluded_embed_metadata_keys),
                    "excluded_llm_metadata_keys": _with_keys(original.node.excluded_llm_metadata_keys),
                }
            )
            out.append(NodeWithScore(node=node, score=probability))
        return out


class CrossEncoderReranker(PairScoringReranker):
    """Rerank retrieved nodes with a sentence-transformers cross-encoder; keep the best `top_n`."""

    model: str = Field(description="Cross-encoder folder or hub id (resolved offline first by pipeline.models.resolve_model).")
    backend: Literal["torch", "torch-bf16", "onnx-int8", "torch-int8"] = Field(default="torch", description="torch: sentence-transformers' CrossEncoder; torch-bf16: the same with bfloat16 weights; onnx-int8 / torch-int8: pipeline.int8.Int8CrossEncoder on onnxruntime / torch inductor, quantized int8 on the CPU (device is ignored).")
    int8_cache_dir: Optional[str] = Field(default=None, description="With backend=onnx-int8 / torch-int8: where the export goes when the model folder is read-only ({run_dir}/int8-cache from from_config).")

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    @classmethod
    def from_config(cls, config: "Config", **overrides: Any) -> "CrossEncoderReranker":
        """A reranker with the `rerank` section's settings (nothing is loaded yet); `rerank.model`
        must pass the `security` section's checks (pipeline.models.check_model_source)."""
        settings: dict[str, Any] = {
            "model": check_model_source(config, config.rerank.model, "rerank.model"),
            "top_n": config.rerank.top_n,
            "batch_size": config.rerank.batch_size,
            "max_length": config.rerank.max_length,
            "retrieval_weight": config.rerank.retrieval_weight,
            "device": "cpu" if config.generator.device == "cpu" else "auto",
            "backend": config.rerank.backend,
            "int8_cache_dir": f"{config.run_dir}/int8-cache",
            "allow_pickle_weights": config.security.allow_pickle_weights,
        }
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_model(cls, model: "CrossEncoder", *, name: str = "<in-memory>", **settings: Any) -> "CrossEncoderReranker":
        """Wrap an already loaded CrossEncoder (training-time evaluation, tests): no second copy."""
        reranker = cls(model=name, **settings)
        reranker._model = model
        return reranker

    def load(self) -> "CrossEncoder":
        """Load the cross-encoder now (it is otherwise loaded on first use); thread-safe, once."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from pipeline.encoders import load_cross_encoder

                    self._model = load_cross_encoder(self.model, device=self.device, max_length=self.max_length, backend=self.backend, allow_pickle=self.allow_pickle_weights, int8_cache_dir=self.int8_cache_dir)
        return self._model

    def _score_uncached(self, question: str, passages: list[str]) -> "np.ndarray":
        import numpy as np
        import torch

        scores = self.load().predict(
            [(question, passage) for passage in passages],
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            activation_fn=torch.nn.Identity(),  # logits: order by them, sigmoid is applied for display
            convert_to_numpy=True,
        )
        scores = np.asarray(scores, dtype=np.float32).reshape(len(passages), -1)
        if scores.shape[1] != 1:
            raise ValueError(
                f"CrossEncoderReranker: model {self.model!r} outputs {scores.shape[1]} labels per pair; a reranker "
                f"needs a one-logit head (num_labels=1). Fix: train one with `python -m finetune.reranker` or use a "
                f"reranking cross-encoder such as cross-encoder/ms-marco-MiniLM-L6-v2"
            )
        return scores[:, 0]


def _with_keys(excluded: Sequence[str]) -> list[str]:
    return list(excluded) + [k for k in RERANK_METADATA_KEYS if k not in excluded]
