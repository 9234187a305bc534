"""ragft rerank: node postprocessors that reorder retrieved passages (a cross-encoder, or the
base LM's query likelihood), and `build_reranker`, the one that rerank.kind names."""

from typing import TYPE_CHECKING

from rerank.cross_encoder import (
    RERANK_METADATA_KEYS,
    CrossEncoderReranker,
    PairScoringReranker,
)

if TYPE_CHECKING:
    from pipeline.config import Config


def build_reranker(config: "Config", **overrides) -> PairScoringReranker:
    """The reranker `rerank.kind` names, with the config's settings (nothing is loaded yet)."""
    if config.rerank.kind == "query-likelihood":
        from rerank.query_likelihood import QueryLikelihoodReranker

        return QueryLikelihoodReranker.from_config(config, **overrides)
    return CrossEncoderReranker.from_config(config, **overrides)


__all__ = ["CrossEncoderReranker", "PairScoringReranker", "RERANK_METADATA_KEYS", "build_reranker"]
