"""Realistic queries over the seed open-book corpus: follow-ups, verbose messages and compound
asks, written by hand and generated, each beside its oracle (the clean seed question).

    python -m eval.retrieval --queries realistic --data ../shared/data/seed-technical-qa/splits --split val

`cases` builds the cases (hand-written in `data/{val,test}.jsonl`, generated from a split's own
questions; `build_cases(data_dir, "train")` for training data from train only); `benchmark`
searches them through `full`'s first stage and reranker with each query variant and reports the
families beside their oracle.
"""

from eval.realistic.benchmark import DEFAULT_VARIANTS, VARIANTS, QueryVariant, case_metrics, evaluate_realistic, query_texts, register_variant, target_ranks, to_markdown
from eval.realistic.benchmark import DATA_DIR
from rewrite.cases import FAMILIES, Case, build_cases, clean_cases, generate_cases, inject_typos, load_hand_cases, resolve_cases, same_topic_pairs

__all__ = [
    "Case",
    "DATA_DIR",
    "DEFAULT_VARIANTS",
    "FAMILIES",
    "QueryVariant",
    "VARIANTS",
    "build_cases",
    "case_metrics",
    "clean_cases",
    "evaluate_realistic",
    "generate_cases",
    "inject_typos",
    "load_hand_cases",
    "query_texts",
    "register_variant",
    "resolve_cases",
    "same_topic_pairs",
    "target_ranks",
    "to_markdown",
]
