"""ragft eval: answer and retrieval metrics, scoring, system comparison, reports, benchmarks."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)
