"""Retrieval variants with the fine-tuned parts, for `eval.retrieval --retrievers ...`.

    python -m eval.retrieval --config tiny --set data.dir=runs/seed/data --set run_dir=runs/seed \\
        --protocol open-book --split test --retrievers dense,hybrid,hybrid+rerank,ft-dense,ft-hybrid+rerank

A variant name is `[ft-]BASE[+rerank]` with BASE one of dense, bm25, hybrid:

- `ft-` builds the corpus's dense vectors with the fine-tuned embedder (`finetune.embedder.output`,
  written by `python -m finetune.embedder`) instead of `index.embed_model`; BM25 is unchanged;
- `+rerank` retrieves `rerank.candidates` passages (50) with BASE and reorders all of them with the
  cross-encoder at `rerank.model` (written by `python -m finetune.reranker`) through
  `CrossEncoderReranker`, so the metrics at 1..20 are those of the reranked list.

Nothing here searches by itself: retrieval is `pipeline.retrieve.build_retriever` over an in-memory
`KnowledgeBase`, reranking is the postprocessor. A cross-encoder score depends only on (question,
passage), so scores are cached per (question, node id) and shared by all `+rerank` variants of a run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipeline.config import Config, ConfigError

if TYPE_CHECKING:
    from pipeline.index import KnowledgeBase

BASES = ("dense", "bm25", "hybrid")
VARIANT_PATTERN = re.compile(r"^(ft-)?(dense|bm25|hybrid)(\+rerank)?$")
VARIANTS = tuple(f"{ft}{base}{rr}" for ft in ("", "ft-") for base in BASES for rr in ("", "+rerank") if ft or rr)


def is_variant(name: str) -> bool:
    """True for the names this module evaluates (a plain dense/bm25/hybrid is not one)."""
    return name in VARIANTS


def parse_variant(name: str) -> tuple[bool, str, bool]:
    """`ft-hybrid+rerank` -> (fine-tuned embedder, base retriever, rerank)."""
    match = VARIANT_PATTERN.match(name)
    if not match:
        raise ConfigError(f"retriever variant {name!r} is not [ft-](dense|bm25|hybrid)[+rerank]; e.g. hybrid+rerank, ft-dense, ft-hybrid+rerank")
    return bool(match.group(1)), match.group(2), bool(match.group(3))


def check_reranker(config: Config) -> None:
    from pipeline.models import ModelNotFoundError, resolve_model

    try:
        resolve_model(config.rerank.model, allow_download=False)
    except ModelNotFoundError:
        raise ConfigError(
            f"+rerank variants need the cross-encoder at rerank.model={config.rerank.model}, which cannot be found; "
            f"train it first: python -m finetune.reranker --config {config.profile} (or set rerank.model to a cross-encoder folder or cached hub id)"
        ) from None


class ScoreCache:
    """Cross-encoder logits per (question, node id), filled lazily in one batch per question."""

    def __init__(self, reranker: Any):
        self.reranker = reranker
        self.scores: dict[tuple[str, str], float] = {}

    def order(self, question: str, hits: Sequence[Any]) -> list[str]:
        """Node ids of `hits` in the reranker's order: by logit, or interpolated with the hits'
        scores when its `retrieval_weight` > 0 (stable: ties keep the retriever's order)."""
        from llama_index.core.schema import MetadataMode

        from rerank.cross_encoder import interpolated_order

        missing = [h for h in hits if (question, h.node.node_id) not in self.scores]
        if missing:
            logits = self.reranker.score_pairs(question, [h.node.get_content(metadata_mode=MetadataMode.NONE) for h in missing])
            for hit, logit in zip(missing, logits):
                self.scores[(question, hit.node.node_id)] = float(logit)
        logits = [self.scores[(question, h.node.node_id)] for h in hits]
        order, _ = interpolated_order(logits, [h.score for h in hits], self.reranker.retrieval_weight)
        return [hits[i].node.node_id for i in order]


def evaluate_variants(
    config: Config,
    nodes: Sequence[Any],
    questions: Sequence[str],
    names: Sequence[str],
    *,
    kb: "KnowledgeBase | None" = None,
    depth: int = 20,
    embeddings: Any = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda *_: None,
) -> dict[str, list[list[str]]]:
    """Ranked node ids per question for each variant name (see the module doc). `kb` is the
    caller's knowledge base over `nodes` with the base embedder (reused for non-ft variants) and
    `embeddings` its query vectors of `questions` (computed here when not given)."""
    from llama_index.core.schema import QueryBundle
    from tqdm.auto import tqdm

    from pipeline.index import KnowledgeBase, finetuned_embedder_config
    from pipeline.retrieve import DenseRetriever, build_retriever
    from rerank.cross_encoder import CrossEncoderReranker

    parsed = {name: parse_variant(name) for name in names}
    if any(rr for _, _, rr in parsed.values()):
        check_reranker(config)
    cache = ScoreCache(CrossEncoderReranker.from_config(config))
    bases: dict[bool, tuple[Config, KnowledgeBase]] = {}
    owned: list[KnowledgeBase] = []
    vectors: dict[bool, Any] = {}
    out: dict[str, list[list[str]]] = {}
    try:
        for name, (ft, base, rerank) in parsed.items():
            if ft not in bases:
                if ft:
                    ft_config = finetuned_embedder_config(config)  # its dir is unused: an in-memory kb
                    log(f"embedding the corpus with the fine-tuned embedder {ft_config.index.embed_model}")
                    ft_kb = KnowledgeBase.from_nodes(ft_config, nodes, show_progress=show_progress)
                    owned.append(ft_kb)
                    bases[True] = (ft_config, ft_kb)
                else:
                    if kb is None:
                        kb = KnowledgeBase.from_nodes(config, nodes, show_progress=show_progress)
                        owned.append(kb)
                    bases[False] = (config, kb)
            cfg, base_kb = bases[ft]
            if ft not in vectors and base != "bm25":
                # query vectors in one batch (much faster than one by one); the caller's for the base kb
                vectors[ft] = embeddings if (not ft and embeddings is not None) else DenseRetriever(base_kb, top_k=1).embed_queries(list(questions))
            k = max(config.rerank.candidates, depth) if rerank else depth
            retriever = build_retriever(cfg, base, k, kb=base_kb)
            ranked = []
            for i, question in enumerate(tqdm(questions, desc=name, unit="q", disable=not show_progress, leave=False)):
                query_vector = vectors.get(ft) if base != "bm25" else None
                hits = retriever.retrieve(QueryBundle(query_str=question, embedding=list(query_vector[i]) if query_vector is not None else None))
                ranked.append(cache.order(question, hits) if rerank else [h.node.node_id for h in hits])
            out[name] = ranked
    finally:
        for owned_kb in owned:
            owned_kb.close()
    return out
