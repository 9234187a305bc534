"""The realistic-query benchmark: `python -m eval.retrieval --queries realistic --split val`.

Every case (eval/realistic/cases.py) is searched with each query variant that applies to its
family, through `full`'s retrieval stack as the engine runs it under the profile: its first stage
(`retrieve.mode` over the fine-tuned embedder's vectors when `index.finetuned_embedder`) and its
reranker (`rerank.kind` at `rerank.model`, interpolated by `rerank.retrieval_weight`), built by the
same functions as `eval.retrieval --retrievers full` (`full_stack_variants`,
`rerank.evaluate.evaluate_variants`); full's rewriter is left out, since query rewriting is what the
variants compare.

Query variants (`VARIANTS`; a rewriter is one more entry, see `register_variant`):
  typed   what the user typed: the message alone (a follow-up's last turn without its history).
  concat  follow-ups only: the user turns of the history and the last turn, joined by spaces
          (assistant turns left out: they are long and would push the last turn past what the
          embedder reads).
  oracle  the clean seed question(s) the case targets, each searched on its own: what a perfect
          rewriter would search with (a perfect decomposition for compound cases).

A variant gives one or more query texts per case; each text is searched on its own and a target's
rank is its best rank over the texts' lists. Per case: MRR@10 and R@1 averaged over its targets
(a compound case has two, so one list can reach at most R@1 = 0.5 and MRR@10 = 0.75), and for
compound cases `both@3` / `both@5`: both targets at rank <= 3 (what the generator reads,
rerank.top_n) / 5. Each is reported per family, and per source (hand, generated), as a mean with
its 95% bootstrap interval over cases (pipeline.metrics), beside the oracle, with the ratio of
the means (variant / oracle).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from eval.realistic.cases import DATA_DIR, FAMILIES, SOURCES, Case, build_cases
from pipeline.config import Config

METRICS = ("mrr@10", "recall@1", "both@3", "both@5")
BOTH_KS = (3, 5)  # both@3: what full's generator reads (rerank.top_n); both@5
MRR_DEPTH = 10


@dataclass(frozen=True)
class QueryVariant:
    """How a case becomes query texts: `texts(case)` gives one or more texts, each searched on its
    own; `families` are the families it applies to."""

    name: str
    texts: Callable[[Case], Sequence[str]]
    families: tuple[str, ...]
    help: str


def _typed(case: Case) -> list[str]:
    return [case.message]


def _concat(case: Case) -> list[str]:
    return [" ".join([t["content"].strip() for t in case.history if t["role"] == "user"] + [case.message.strip()])]


def _oracle(case: Case) -> list[str]:
    return list(case.targets)


VARIANTS: dict[str, QueryVariant] = {}


def register_variant(variant: QueryVariant) -> None:
    """Add (or replace) a query variant; a rewriter is `QueryVariant("rewriter", lambda case:
    [rewrite(case.conversation)], FAMILIES, "...")`, then `--variants` may name it."""
    VARIANTS[variant.name] = variant


for _variant in (
    QueryVariant("typed", _typed, FAMILIES, "what the user typed: the message alone (a follow-up's last turn without its history)"),
    QueryVariant("concat", _concat, ("follow-up",), "the user turns of the history and the last turn, joined by spaces"),
    QueryVariant("oracle", _oracle, ("follow-up", "verbose", "compound"), "the clean seed question(s) of the case, each searched on its own"),
):
    register_variant(_variant)
DEFAULT_VARIANTS = ("typed", "concat", "oracle")


def applies(case: Case, variant: str) -> bool:
    return case.family in _variant_spec(variant).families


def _variant_spec(variant: str) -> QueryVariant:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown query variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def query_texts(case: Case, variant: str) -> list[str]:
    """The texts `variant` searches with for `case` (each on its own)."""
    spec = _variant_spec(variant)
    if case.family not in spec.families:
        raise ValueError(f"query variant {variant!r} does not apply to {case.family} cases (only {', '.join(spec.families)}); case {case.id!r}")
    texts = [t for t in spec.texts(case) if t and t.strip()]
    if not texts:
        raise ValueError(f"query variant {variant!r} gave no text for case {case.id!r}")
    return texts


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def target_ranks(rankings: Sequence[Sequence[str]], relevant: Sequence[str]) -> list[Optional[int]]:
    """The 1-based rank of each relevant id: its best rank over the rankings (one per query text of
    the variant), None when no ranking holds it."""
    from pipeline.metrics import first_relevant_rank

    ranks = []
    for node_id in relevant:
        found = [r for r in (first_relevant_rank(ids, {node_id}) for ids in rankings) if r is not None]
        ranks.append(min(found) if found else None)
    return ranks


def case_metrics(ranks: Sequence[Optional[int]]) -> dict[str, float]:
    """MRR@10 and R@1 averaged over the case's targets; with two or more targets, both@k: every
    target at rank <= k, for k in BOTH_KS."""
    if not ranks:
        raise ValueError("case_metrics needs the rank of at least one target")
    values = {
        "mrr@10": sum(1.0 / r if r is not None and r <= MRR_DEPTH else 0.0 for r in ranks) / len(ranks),
        "recall@1": sum(1.0 if r == 1 else 0.0 for r in ranks) / len(ranks),
    }
    if len(ranks) > 1:
        for k in BOTH_KS:
            values[f"both@{k}"] = 1.0 if all(r is not None and r <= k for r in ranks) else 0.0
    return values


def summarize_groups(cases: Sequence[Case], ranks: Mapping[str, Mapping[str, Sequence[Optional[int]]]], variants: Sequence[str], *, samples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Per family, per source ("all", and "hand"/"generated" when the family has both): n, each
    variant's summary (means and 95% bootstrap intervals over cases) and its ratio to the oracle.
    `ranks[case.id][variant]` are the case's target ranks."""
    from pipeline.metrics import summarize

    out: dict[str, Any] = {}
    for family in FAMILIES:
        members = [c for c in cases if c.family == family]
        if not members:
            continue
        sources = sorted({c.source for c in members}, key=SOURCES.index)
        groups = {"all": members, **({s: [c for c in members if c.source == s] for s in sources} if len(sources) > 1 else {})}
        out[family] = {}
        for source, group in groups.items():
            row: dict[str, Any] = {"n": len(group), "variants": {}, "ratios": {}}
            for variant in variants:
                if not applies(group[0], variant):
                    continue
                per_case = [case_metrics(ranks[c.id][variant]) for c in group]
                values = {m: [v[m] for v in per_case] for m in METRICS if m in per_case[0]}
                row["variants"][variant] = summarize(values, samples=samples, seed=seed)
            oracle = row["variants"].get("oracle")
            if oracle is not None:
                for variant, summary in row["variants"].items():
                    if variant != "oracle":
                        row["ratios"][variant] = {m: (summary[m] / oracle[m] if oracle[m] else None) for m in METRICS if m in summary}
            out[family][source] = row
    return out


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def retrieval_stack(config: Config) -> str:
    """The retriever variant ([ft-]BASE[+rerank], rerank/evaluate.py) that `full` runs before
    generation under `config`, without its rewriter (the query variants replace it)."""
    from eval.retrieval import full_stack_variants
    from pipeline.config import config_from_dict

    raw = config.to_dict()
    raw["rewrite"]["mode"] = "none"  # full-no-rewrite refuses nothing: decompose is a query variant here
    return full_stack_variants(config_from_dict(raw), ["full-no-rewrite"])["full-no-rewrite"]


def rank_with_stack(config: Config, nodes: Sequence[Any], texts: Sequence[str], *, show_progress: bool = True, log: Callable[[str], None] = lambda *_: None) -> tuple[str, dict[str, list[str]]]:
    """The stack's name and the ranked node ids (best first, 20 deep) of every distinct text."""
    from pipeline.metrics import DEPTH
    from rerank.evaluate import evaluate_variants

    stack = retrieval_stack(config)
    unique = list(dict.fromkeys(texts))
    ranked = evaluate_variants(config, nodes, unique, [stack], depth=DEPTH, show_progress=show_progress, log=log)[stack]
    return stack, dict(zip(unique, ranked))


def evaluate_realistic(
    config: Config,
    data_dir: str | Path,
    split: str,
    *,
    hand_dir: Optional[str | Path] = DATA_DIR,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    per_family: Optional[int] = None,
    rank: Optional[Callable[[Sequence[str]], tuple[str, Mapping[str, Sequence[str]]]]] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The benchmark on `split` (val: dev, test: test) of the open-book corpus of `data_dir`.
    `per_family` generated cases per family (default GENERATED_PER_FAMILY); `rank(texts) ->
    (stack name, {text: ranked node ids})` replaces full's stack (tests)."""
    from eval.realistic import cases as case_builders
    from pipeline.data import open_book_corpus

    per_family = case_builders.GENERATED_PER_FAMILY if per_family is None else per_family

    for variant in variants:
        _variant_spec(variant)
    nodes, _, _ = open_book_corpus(data_dir)
    cases = build_cases(data_dir, split, hand_dir=hand_dir, seed=config.eval.seed, per_family=per_family)
    counts = {f: {s: sum(1 for c in cases if c.family == f and c.source == s) for s in SOURCES} for f in FAMILIES}
    log(f"realistic queries, {split}: " + "; ".join(f"{f} " + ", ".join(f"{n} {s}" for s, n in by.items() if n) for f, by in counts.items()))
    texts = {(c.id, v): query_texts(c, v) for c in cases for v in variants if applies(c, v)}
    started = time.perf_counter()
    if rank is None:
        stack, ranked = rank_with_stack(config, nodes, [t for ts in texts.values() for t in ts], show_progress=show_progress, log=log)
    else:
        stack, ranked = rank(list(dict.fromkeys(t for ts in texts.values() for t in ts)))
    seconds = time.perf_counter() - started
    ranks = {c.id: {v: target_ranks([ranked[t] for t in texts[(c.id, v)]], c.relevant) for v in variants if (c.id, v) in texts} for c in cases}
    log(f"searched {len(set(t for ts in texts.values() for t in ts))} distinct query texts with {stack} in {seconds:.1f} s")
    return {
        "protocol": "open-book",
        "queries": "realistic",
        "split": split,
        "data": str(data_dir),
        "corpus_size": len(nodes),
        "stack": {"runs": stack, "what": "full's first stage and reranker under the profile, without its rewriter"},
        "settings": {"full": {"retrieve.mode": config.retrieve.mode, "index.finetuned_embedder": config.index.finetuned_embedder, "index.embed_model": config.index.embed_model, "finetune.embedder.output": config.finetune.embedder.output, "rerank.enabled": config.rerank.enabled, "rerank.kind": config.rerank.kind, "rerank.model": config.rerank.model, "rerank.candidates": config.rerank.candidates, "rerank.retrieval_weight": config.rerank.retrieval_weight, "rerank.top_n": config.rerank.top_n}},
        "hand_cases": None if hand_dir is None else str(Path(hand_dir) / f"{split}.jsonl"),
        "generated_per_family": per_family,
        "seed": config.eval.seed,
        "variants": {v: VARIANTS[v].help for v in variants},
        "counts": counts,
        "families": summarize_groups(cases, ranks, variants, samples=config.eval.bootstrap_samples, seed=config.eval.seed),
        "query_texts": len(set(t for ts in texts.values() for t in ts)),
        "seconds": {"retrieval": round(seconds, 1)},
        "cases": [{"id": c.id, "family": c.family, "source": c.source, "kind": c.kind, "relevant": list(c.relevant), "ranks": ranks[c.id]} for c in cases],
    }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _cell(summary: Mapping[str, Any], metric: str) -> str:
    if metric not in summary:
        return "–"
    low, high = summary["ci95"][metric]
    return f"{summary[metric]:.3f} [{low:.3f}, {high:.3f}]"


def _ratio(ratios: Mapping[str, Any], metric: str) -> str:
    value = ratios.get(metric)
    return "–" if value is None else f"{value:.2f}"


def to_markdown(result: Mapping[str, Any]) -> str:
    """The benchmark's table: one row per family, source and query variant."""
    lines = [
        f"### Realistic queries, open-book, split {result['split']} ({result['corpus_size']} passages; stack `{result['stack']['runs']}`: {result['stack']['what']})",
        "",
        "Cells: mean [95% bootstrap interval over cases]. MRR@10 and R@1 are averaged over a case's targets (compound: two, so a single list reaches at most R@1 0.5);"
        " both@k: both targets of a compound case at rank <= k. `/ oracle`: the variant's mean over the oracle's (the clean seed question(s), each searched on its own).",
        "",
        "| family | source | n | query | MRR@10 | R@1 | both@3 | both@5 | MRR@10 / oracle | R@1 / oracle | both@3 / oracle |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family, by_source in result["families"].items():
        for source, row in by_source.items():
            for variant, summary in row["variants"].items():
                ratios = row["ratios"].get(variant, {})
                name = "typed (the seed question)" if family == "clean" else variant
                lines.append(
                    f"| {family} | {source} | {row['n']} | {name} | {_cell(summary, 'mrr@10')} | {_cell(summary, 'recall@1')} | {_cell(summary, 'both@3')} | {_cell(summary, 'both@5')} | "
                    f"{_ratio(ratios, 'mrr@10')} | {_ratio(ratios, 'recall@1')} | {_ratio(ratios, 'both@3')} |"
                )
    lines += ["", "Query variants: " + "; ".join(f"`{name}`: {help}" for name, help in result["variants"].items()) + "."]
    counts = "; ".join(f"{family}: " + ", ".join(f"{n} {source}" for source, n in by.items() if n) for family, by in result["counts"].items())
    lines += ["", f"Cases: {counts}. {result['query_texts']} distinct query texts searched in {result['seconds']['retrieval']} s."]
    return "\n".join(lines)


def evaluate_cli(config: Config, args: Any, *, default_retrievers: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`eval.retrieval --queries realistic`: check the arguments that do not apply, then run."""
    from pipeline.config import ConfigError

    if args.protocol != "open-book":
        raise ConfigError("--queries realistic needs --protocol open-book (its cases are judged by their targets' own answers, the open-book gold)")
    if args.tune or args.retrievers != default_retrievers:
        raise ConfigError("--queries realistic searches with full's first stage and reranker under the profile; drop --tune and --retrievers (change the stack with --set)")
    hand_dir = None if (args.cases or "").lower() == "none" else (args.cases or DATA_DIR)
    return evaluate_realistic(config, config.data.dir, args.split, hand_dir=hand_dir, show_progress=not args.quiet, log=log)


def readme(result: Mapping[str, Any], *, title: str = "realistic: query rewriting's benchmark") -> str:
    """A results folder's README for one run (results/realistic/README.md), from its JSON alone:
    the command, revision and wall time the run recorded, what the families are, and the table."""
    run = result.get("run", {})
    lines = [
        f"# {title}",
        "",
        "Generated by `python -m eval.realistic " + "<run>.json --out README.md` from the run's own JSON; do not edit by hand.",
        "",
        "```bash",
        run.get("command", "(command not recorded)"),
        "```",
        "",
        f"- git revision: `{run.get('git_revision', 'unknown')}`; wall time {run.get('seconds', '–')} s (searching {result['query_texts']} query texts: {result['seconds']['retrieval']} s)",
        f"- data: `{result['data']}` ({result['corpus_size']} passages, every answer of train+val+test); split `{result['split']}`; hand-written cases: `{result.get('hand_cases')}`; generated: at most {result['generated_per_family']} per family, seed {result['seed']}",
        f"- stack: `{result['stack']['runs']}` ({result['stack']['what']}); settings: " + ", ".join(f"{k}={v}" for k, v in result.get("settings", {}).get("full", {}).items()),
        "",
        "Families: `clean` (the seed question itself), `follow-up` (the last turn of a conversation: pronouns, ellipsis, and topic shifts whose last turn stands alone),"
        " `verbose` (one ask wrapped in fluff, red herrings and typos), `compound` (two asks in one message, two relevant passages).",
        " `hand`: written by hand as users type (eval/realistic/data); `generated`: built from the split's own questions (eval/realistic/cases.py).",
        "",
        to_markdown(result).replace("### ", "## ", 1),
        "",
    ]
    return "\n".join(lines)
