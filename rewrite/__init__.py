"""ragft rewrite: query transforms (HyDE, multi, decompose) that rewrite FOR retrieval."""

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA, see pipeline/__init__.py)

from rewrite.rewriter import MODES, QueryRewriter, Rewrite, RewrittenQuery, split_clauses  # noqa: E402

__all__ = ["MODES", "QueryRewriter", "Rewrite", "RewrittenQuery", "split_clauses"]
