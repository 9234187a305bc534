"""ragft rewrite: query transforms (HyDE, multi, decompose) that rewrite FOR retrieval."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)
