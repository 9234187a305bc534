"""Retrieval over the knowledge base: dense (Chroma), BM25 (bm25s) and hybrid fusion.

    python -m pipeline.retrieve "What is a B-tree?"                       # config.retrieve.mode, top_k
    python -m pipeline.retrieve --mode bm25 --top-k 10 "How does TCP slow start work?"
    python -m pipeline.retrieve --mode hybrid --hypothetical "A B-tree is a balanced search tree ..." "What is a B-tree?"

API (the reranker, RAFT, rewriter and engine code use exactly this):

    from pipeline.retrieve import build_retriever, open_index
    kb = open_index(config)                       # once per process; stores load lazily, no lock taken
    retriever = build_retriever(config, mode="hybrid", top_k=10, kb=kb)   # mode/top_k default: config.retrieve
    hits = retriever.retrieve("What is a B-tree?")  # list[NodeWithScore], best first, at most top_k

    # a rewriter passes hypothetical passages the LlamaIndex way (HyDEQueryTransform does the same):
    hits = retriever.retrieve(QueryBundle(query_str=question, custom_embedding_strs=[hypothetical]))

Every returned node is a copy (the store's and the caller's nodes are never mutated) whose metadata
holds the original metadata (QA nodes: id, question, answer, source, split, kind; document chunks:
id, source, file_name, heading, chunk, kind) plus what each retriever saw:
`dense_rank`/`dense_score` (1-based rank, cosine similarity), `bm25_rank`/`bm25_score`, and for the
hybrid `fusion_score`; a retriever that did not return the node has None there. `retriever` names
the retriever that produced the list. These keys never enter embeddings or prompts.
`NodeWithScore.score` is the cosine (dense), the BM25 score (bm25) or the fusion score (hybrid).

How the hypothetical passage is used (following the HyDE paper, Gao et al. 2022): dense search
embeds the original question with the query encoder and each hypothetical passage with the document
encoder and searches with the MEAN of these vectors (or, with rewrite.hyde_question_weight w, with
w * the question's vector + (1 - w) * the hypotheticals' mean); BM25 searches the original question's terms
plus the hypothetical passages' terms (one concatenated query).

Hybrid fusion (`retrieve.fusion`): `rrf` is weighted reciprocal rank fusion,
score(d) = sum_i w_i / (k + rank_i(d)) over the retrievers that returned d (LlamaIndex's
QueryFusionRetriever hard-codes k=60 and ignores weights there); `score` min-max normalizes each
retriever's scores over its candidate list to [0, 1] and sums them weighted (absent = 0). Each
retriever returns `retrieve.candidates` (at least top_k) nodes before fusion. Ties keep the order of
the best single rank. Bad input: an empty query raises QueryError; a query longer than
`retrieve.max_query_chars` is truncated with a warning and still answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

from pipeline.config import Config, add_config_arguments, config_from_args
from pipeline.errors import UserFacingError, run_cli
from pipeline.index import KnowledgeBase, KnowledgeBaseError, open_index

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "MODES",
    "QueryError",
    "build_retriever",
    "check_query",
    "fuse",
    "fused_ids",
    "open_index",
]

logger = logging.getLogger(__name__)

MODES = ("dense", "bm25", "hybrid")
FUSION_MODES = ("rrf", "score")
RETRIEVAL_METADATA_KEYS = ("dense_rank", "dense_score", "bm25_rank", "bm25_score", "fusion_score", "retriever")


class QueryError(UserFacingError, ValueError):
    """The query cannot be searched (empty, or not text)."""


def check_query(text: Any, max_chars: int) -> str:
    """The query to search: non-empty text, truncated (with a warning) to `max_chars`."""
    if not isinstance(text, str):
        raise QueryError(f"a query must be a string; got {type(text).__name__}")
    if not text.strip():
        raise QueryError("the query is empty (or only whitespace); pass a question to retrieve passages for")
    if len(text) > max_chars:
        message = (
            f"query of {len(text)} characters truncated to its first {max_chars} (retrieve.max_query_chars); "
            "the embedder reads at most its model's token limit anyway"
        )
        warnings.warn(message, UserWarning, stacklevel=4)
        logger.warning(message)
        return text[:max_chars]
    return text


def _hypotheticals(bundle: QueryBundle) -> list[str]:
    """Hypothetical passages a rewriter put in `custom_embedding_strs` (the original excluded)."""
    return [s for s in (bundle.custom_embedding_strs or []) if isinstance(s, str) and s.strip() and s != bundle.query_str]


def _annotated(hit: NodeWithScore, updates: Mapping[str, Any], score: float | None) -> NodeWithScore:
    """A copy of `hit` whose node metadata has `updates`; the input node is left untouched."""
    node = hit.node.model_copy()
    node.metadata = {**hit.node.metadata, **updates}
    node.excluded_embed_metadata_keys = list(dict.fromkeys([*hit.node.excluded_embed_metadata_keys, *RETRIEVAL_METADATA_KEYS]))
    node.excluded_llm_metadata_keys = list(dict.fromkeys([*hit.node.excluded_llm_metadata_keys, *RETRIEVAL_METADATA_KEYS]))
    return NodeWithScore(node=node, score=score)


class _KnowledgeBaseRetriever(BaseRetriever):
    """Shared part of the single-store retrievers: query checks, freshness, rank/score stamps."""

    name = "base"

    def __init__(self, kb: KnowledgeBase, *, top_k: int = 5, max_query_chars: Optional[int] = None, **kwargs: Any):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"{type(self).__name__}: top_k must be a positive integer; got {top_k!r}")
        super().__init__(**kwargs)
        self.kb = kb
        self.top_k = top_k
        self.max_query_chars = max_query_chars or kb.config.retrieve.max_query_chars

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = check_query(query_bundle.query_str, self.max_query_chars)
        bundle = QueryBundle(
            query_str=query,
            custom_embedding_strs=[h[: self.max_query_chars] for h in _hypotheticals(query_bundle)] or None,
            embedding=query_bundle.embedding if query == query_bundle.query_str else None,
        )
        self.kb.refresh_if_changed()
        hits = self._search(bundle, self.top_k)
        return [
            _annotated(hit, {f"{self.name}_rank": rank, f"{self.name}_score": hit.score, "retriever": self.name}, hit.score)
            for rank, hit in enumerate(hits, start=1)
        ]

    def _search(self, bundle: QueryBundle, k: int) -> list[NodeWithScore]:  # pragma: no cover - abstract
        raise NotImplementedError


class DenseRetriever(_KnowledgeBaseRetriever):
    """Nearest neighbours in Chroma by cosine similarity of the embedder's vectors."""

    name = "dense"

    def __init__(self, kb: KnowledgeBase, *, question_weight: Optional[float] = None, **kwargs: Any):
        if question_weight is not None and not 0.0 <= question_weight <= 1.0:
            raise ValueError(f"DenseRetriever: question_weight={question_weight!r} must be between 0 and 1 (or None for the plain HyDE mean)")
        super().__init__(kb, **kwargs)
        self.question_weight = question_weight

    def embed_queries(self, queries: Sequence[str]) -> list[list[float]]:
        """Query vectors of many questions in batches (evaluation and benchmarks pass them as
        `QueryBundle(query_str=q, embedding=v)`, which `retrieve` uses as is)."""
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        embed = self.kb.embed_model
        if isinstance(embed, HuggingFaceEmbedding):
            # batched, with the model's query prompt: exactly what get_query_embedding does per text
            return [list(map(float, v)) for v in embed._embed(list(queries), prompt_name="query")]
        return [embed.get_query_embedding(q) for q in queries]

    def query_embedding(self, bundle: QueryBundle) -> list[float]:
        """The search vector: the query's, or (with hypothetical passages) the HyDE mean, or with
        `question_weight` w: w * the query's + (1 - w) * the hypotheticals' mean."""
        embed = self.kb.embed_model
        question = list(bundle.embedding) if bundle.embedding is not None else embed.get_query_embedding(bundle.query_str)
        hypotheticals = _hypotheticals(bundle)
        if not hypotheticals:
            return question
        passages = embed.get_text_embedding_batch(hypotheticals)
        if self.question_weight is None:
            vectors = [question, *passages]
            return [sum(values) / len(vectors) for values in zip(*vectors)]
        w = self.question_weight
        return [w * q + (1.0 - w) * sum(values) / len(passages) for q, values in zip(question, zip(*passages))]

    def _search(self, bundle: QueryBundle, k: int) -> list[NodeWithScore]:
        from llama_index.core.vector_stores.types import VectorStoreQuery

        size = self.kb.size
        if size == 0:
            return []
        result = self.kb.vector_store.query(VectorStoreQuery(query_embedding=self.query_embedding(bundle), similarity_top_k=min(k, size)))
        hits = []
        for node, similarity in zip(result.nodes or [], result.similarities or []):
            # ChromaVectorStore reports exp(-distance); in cosine space distance = 1 - cosine
            cosine = 1.0 + math.log(similarity) if similarity > 0 else -1.0
            hits.append(NodeWithScore(node=node, score=cosine))
        return hits


class BM25Retriever(_KnowledgeBaseRetriever):
    """Okapi BM25 (bm25s through llama-index-retrievers-bm25) over the same nodes."""

    name = "bm25"

    def _search(self, bundle: QueryBundle, k: int) -> list[NodeWithScore]:
        import bm25s
        from llama_index.core.vector_stores.utils import metadata_dict_to_node

        inner = self.kb.bm25
        text = " ".join([bundle.query_str, *_hypotheticals(bundle)])
        tokens = bm25s.tokenize(text, stemmer=inner.stemmer if not inner.skip_stemming else None, token_pattern=inner.token_pattern, show_progress=False)
        if not any(len(ids) for ids in tokens.ids):
            return []  # nothing searchable (only punctuation or stopwords): BM25 has no opinion
        size = len(inner.corpus)
        indexes, scores = inner.bm25.retrieve(tokens, k=min(k, size), show_progress=False)
        hits = []
        for idx, score in zip(indexes[0], scores[0]):
            if score <= 0:
                continue  # no query term in the passage: a rank here would be noise in fusion
            entry = idx if isinstance(idx, dict) else inner.corpus[int(idx)]
            hits.append(NodeWithScore(node=metadata_dict_to_node(entry), score=float(score)))
        return hits


def _fuse_scores(results: Mapping[str, Sequence[NodeWithScore]], mode: str, rrf_k: float, weights: Mapping[str, float] | None):
    """The arithmetic of fusion: fused score, per-list (rank, score) and first hit of every node
    id, ranked best first (ties: best single rank, then first appearance)."""
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode must be one of {', '.join(FUSION_MODES)}; got {mode!r}")
    if rrf_k <= 0:
        raise ValueError(f"rrf_k must be > 0; got {rrf_k!r}")
    weights = dict(weights or {})
    unknown = [name for name in weights if name not in results]
    if unknown:
        raise ValueError(f"weights for unknown retrievers {unknown}; retrievers: {list(results)}")
    fused: dict[str, float] = {}
    stamps: dict[str, dict[str, Any]] = {}
    first: dict[str, NodeWithScore] = {}
    best_rank: dict[str, int] = {}
    order: dict[str, int] = {}
    for name, hits in results.items():
        weight = float(weights.get(name, 1.0))
        if weight < 0:
            raise ValueError(f"weight of {name!r} must be >= 0; got {weight}")
        scores = [h.score if h.score is not None else 0.0 for h in hits]
        low, high = (min(scores), max(scores)) if scores else (0.0, 0.0)
        seen_here: set[str] = set()
        for rank, hit in enumerate(hits, start=1):
            node_id = hit.node.node_id
            if node_id in seen_here:
                continue  # a retriever repeating a node: count its best rank only
            seen_here.add(node_id)
            if mode == "rrf":
                contribution = weight / (rrf_k + rank)
            else:
                contribution = weight * ((scores[rank - 1] - low) / (high - low) if high > low else 1.0)
            fused[node_id] = fused.get(node_id, 0.0) + contribution
            stamps.setdefault(node_id, {})[name] = (rank, hit.score)
            first.setdefault(node_id, hit)
            best_rank[node_id] = min(best_rank.get(node_id, rank), rank)
            order.setdefault(node_id, len(order))
    ranked = sorted(fused, key=lambda i: (-fused[i], best_rank[i], order[i]))
    return ranked, fused, stamps, first


def fused_ids(
    results: Mapping[str, Sequence[NodeWithScore]],
    *,
    mode: str = "rrf",
    rrf_k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    top_k: int = 5,
) -> list[str]:
    """Only the node ids `fuse` would return, in order, without copying nodes (for tuning)."""
    return _fuse_scores(results, mode, rrf_k, weights)[0][:top_k]


def fuse(
    results: Mapping[str, Sequence[NodeWithScore]],
    *,
    mode: str = "rrf",
    rrf_k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    top_k: int = 5,
) -> list[NodeWithScore]:
    """Fuse ranked lists (name -> hits, best first) into one list of at most `top_k` copies.

    rrf: sum_i w_i / (rrf_k + rank_i); score: sum_i w_i * minmax_i(score). Nodes are deduplicated
    by id; each keeps `<name>_rank`/`<name>_score` of every list (None where absent) and
    `fusion_score`. Pure function: the tuning in eval.retrieval uses the same arithmetic."""
    ranked, fused, stamps, first = _fuse_scores(results, mode, rrf_k, weights)
    out = []
    for node_id in ranked[:top_k]:
        updates: dict[str, Any] = {}
        for name in results:
            rank, score = stamps[node_id].get(name, (None, None))
            updates[f"{name}_rank"], updates[f"{name}_score"] = rank, score
        updates["fusion_score"] = fused[node_id]
        updates["retriever"] = "hybrid"
        out.append(_annotated(first[node_id], updates, fused[node_id]))
    return out


class HybridRetriever(BaseRetriever):
    """Weighted fusion of several retrievers (by default dense + BM25); see the module doc."""

    def __init__(
        self,
        retrievers: Mapping[str, BaseRetriever],
        *,
        mode: str = "rrf",
        rrf_k: float = 60.0,
        weights: Mapping[str, float] | None = None,
        top_k: int = 5,
        max_query_chars: int = 2000,
        **kwargs: Any,
    ):
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        if mode not in FUSION_MODES:
            raise ValueError(f"HybridRetriever: mode must be one of {', '.join(FUSION_MODES)}; got {mode!r}")
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"HybridRetriever: top_k must be a positive integer; got {top_k!r}")
        unknown = [name for name in (weights or {}) if name not in retrievers]
        if unknown:
            raise ValueError(f"HybridRetriever: weights for unknown retrievers {unknown}; retrievers: {list(retrievers)}")
        super().__init__(**kwargs)
        self.retrievers = dict(retrievers)
        self.mode, self.rrf_k, self.top_k = mode, float(rrf_k), top_k
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.retrievers}
        self.max_query_chars = max_query_chars

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        check_query(query_bundle.query_str, 10**12)  # empty -> clear error before any search
        results = {name: retriever.retrieve(query_bundle) for name, retriever in self.retrievers.items() if self.weights[name] > 0}
        return fuse(results, mode=self.mode, rrf_k=self.rrf_k, weights={n: self.weights[n] for n in results}, top_k=self.top_k)


def build_retriever(
    config: Config,
    mode: Optional[str] = None,
    top_k: Optional[int] = None,
    *,
    kb: Optional[KnowledgeBase] = None,
    embed_model: "BaseEmbedding | None" = None,
) -> BaseRetriever:
    """THE way to get a retriever: `mode` dense | bm25 | hybrid (default `retrieve.mode`), returning
    `top_k` nodes (default `retrieve.top_k`). Pass `kb` to share loaded stores between retrievers
    (default: `open_index(config)`); the fusion settings come from the `retrieve` section."""
    settings = config.retrieve
    mode = mode or settings.mode
    if mode not in MODES:
        raise ValueError(f"retriever mode must be one of {', '.join(MODES)}; got {mode!r}")
    top_k = top_k if top_k is not None else settings.top_k
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer; got {top_k!r}")
    kb = kb or open_index(config, embed_model=embed_model)
    weight = config.rewrite.hyde_question_weight
    if mode == "dense":
        return DenseRetriever(kb, top_k=top_k, max_query_chars=settings.max_query_chars, question_weight=weight)
    if mode == "bm25":
        return BM25Retriever(kb, top_k=top_k, max_query_chars=settings.max_query_chars)
    candidates = max(settings.candidates, top_k)
    return HybridRetriever(
        {
            "dense": DenseRetriever(kb, top_k=candidates, max_query_chars=settings.max_query_chars, question_weight=weight),
            "bm25": BM25Retriever(kb, top_k=candidates, max_query_chars=settings.max_query_chars),
        },
        mode=settings.fusion,
        rrf_k=settings.rrf_k,
        weights={"dense": settings.dense_weight, "bm25": settings.bm25_weight},
        top_k=top_k,
        max_query_chars=settings.max_query_chars,
    )


# --------------------------------------------------------------------------------------------
# command line: look at what the retrievers return
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.retrieve",
        description="Print what a retriever returns for a question, with every retriever's rank and score.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", help="The question to retrieve passages for.")
    parser.add_argument("--mode", choices=MODES, help="Retriever; default: retrieve.mode of the profile.")
    parser.add_argument("--top-k", type=int, help="Passages returned; default: retrieve.top_k of the profile.")
    parser.add_argument("--hypothetical", action="append", default=[], metavar="TEXT", help="A hypothetical answer passage (as a HyDE rewriter would write); repeatable.")
    parser.add_argument("--json", action="store_true", help="Print JSON lines (id, score, metadata, text) instead of a readable list.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        config = config_from_args(args)
        retriever = build_retriever(config, args.mode, args.top_k)
        hits = retriever.retrieve(QueryBundle(query_str=args.query, custom_embedding_strs=args.hypothetical or None))
        for rank, hit in enumerate(hits, start=1):
            meta = {k: v for k, v in hit.node.metadata.items() if k in RETRIEVAL_METADATA_KEYS or k in ("id", "source", "heading")}
            if args.json:
                print(json.dumps({"rank": rank, "id": hit.node.node_id, "score": hit.score, "metadata": meta, "text": hit.node.get_content()}, ensure_ascii=False))
            else:
                stamps = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in meta.items() if k in RETRIEVAL_METADATA_KEYS and v is not None)
                print(f"{rank:>2}. [{hit.score:.4f}] {hit.node.node_id}  ({stamps})")
                print("    " + hit.node.get_content().replace("\n", "\n    ")[:400])

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
