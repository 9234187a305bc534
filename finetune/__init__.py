"""ragft finetune: one module per trainable part (tiny base LM, generator, rewriter, reranker, embedder)."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)
