"""ragft rewrite: query transforms (HyDE, multi, decompose) that rewrite FOR retrieval, and the
chat's condense step (a follow-up message + its conversation -> a standalone question)."""


from rewrite.condense import Condensed, Condenser, needs_condensing
from rewrite.rewriter import MODES, QueryRewriter, Rewrite, RewrittenQuery, split_clauses

__all__ = ["MODES", "Condensed", "Condenser", "QueryRewriter", "Rewrite", "RewrittenQuery", "needs_condensing", "split_clauses"]
