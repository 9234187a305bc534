"""ragft rerank: the cross-encoder node postprocessor."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)
