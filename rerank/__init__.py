"""ragft rerank: the cross-encoder node postprocessor."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)

from rerank.cross_encoder import (  # noqa: E402
    RERANK_METADATA_KEYS,
    CrossEncoderReranker,
)

__all__ = ["CrossEncoderReranker", "RERANK_METADATA_KEYS"]
