"""ragft finetune: one module per trainable part (tiny base LM, generator, rewriter, reranker, embedder)."""

