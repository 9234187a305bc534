"""ragft rewrite: query transforms (HyDE, multi, decompose) that rewrite FOR retrieval."""


from rewrite.rewriter import MODES, QueryRewriter, Rewrite, RewrittenQuery, split_clauses

__all__ = ["MODES", "QueryRewriter", "Rewrite", "RewrittenQuery", "split_clauses"]
