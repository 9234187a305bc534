"""The realistic-query benchmark: `python -m eval.retrieval --queries realistic --split val`.

Every case (rewrite/cases.py) is searched with each query variant that applies to its
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
rank is its rank in the round-robin merge of the texts' lists (`merge_rankings`), the engine's
merge: what the generator reads. Per case: MRR@10 and R@1 averaged over its targets
(a compound case has two, so one list can reach at most R@1 = 0.5 and MRR@10 = 0.75), and for
compound cases `both@3` / `both@5`: both targets at rank <= 3 (what the generator reads,
rerank.top_n) / 5. Each is reported per family, and per source (hand, generated), as a mean with
its 95% bootstrap interval over cases (pipeline.metrics), beside the oracle, with the ratio of
the means (variant / oracle).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from rewrite.cases import FAMILIES, SOURCES, Case, build_cases
from pipeline.config import Config

DATA_DIR = Path(__file__).resolve().parent / "data"  # the hand-written cases: {val,test}.jsonl
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
# rewriters as query variants
# --------------------------------------------------------------------------------------------

REWRITERS = {
    "condense-base": "zero-shot SmolLM2 (the base LM) with ragft's condense prompt, behind the gate (rewrite/condense.py)",
    "condense-llamaindex": "LlamaIndex's CondenseQuestionChatEngine prompt on the same base LM, as that engine runs it: every turn with history condensed, a first turn searched as typed",
    "condense-trained": "the trained condenser (rewrite.condense_adapter, python -m finetune.condenser) with ragft's condense prompt, behind the gate",
}


def _history(case: Case) -> list[Any]:
    from llama_index.core.base.llms.types import ChatMessage

    return [ChatMessage(role=t["role"], content=t["content"]) for t in case.history]


def rewriter_condenser(config: Config, name: str) -> Any:
    """The Condenser behind a REWRITERS variant (the LM loads on its first message)."""
    from pipeline.models import load_llm
    from rewrite.condense import Condenser
    from rewrite.prompts import llamaindex_condense_messages

    if name not in REWRITERS:
        raise ValueError(f"unknown rewriter {name!r}; known: {', '.join(REWRITERS)}")
    if name == "condense-trained" and not config.rewrite.condense_adapter:
        raise ValueError("condense-trained needs rewrite.condense_adapter (train it: python -m finetune.condenser)")
    adapter = config.rewrite.condense_adapter if name == "condense-trained" else None
    kwargs: dict[str, Any] = {"prompt": llamaindex_condense_messages, "gate": False} if name == "condense-llamaindex" else {}
    return Condenser(lambda: load_llm(config, adapter=adapter, verbose=False), max_new_tokens=config.rewrite.max_new_tokens, max_questions=config.rewrite.n_queries, **kwargs)


def register_rewriters(config: Config, names: Sequence[str], cases: Sequence[Case], *, show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run each named rewriter over every case once (batched; clean ones too, to show it leaves
    them as they are) and register it as a query variant reading those rewrites; returns per
    rewriter what it cost (LM calls, seconds) and what it wrote."""
    costs: dict[str, Any] = {}
    for name in names:
        condenser = rewriter_condenser(config, name)
        members = list(cases)  # the clean family too: a rewriter must leave a clean question's retrieval as it was
        started = time.perf_counter()
        made = condenser.condense_many([(c.message, _history(c)) for c in members], show_progress=show_progress)
        seconds = time.perf_counter() - started
        by_id = {c.id: m for c, m in zip(members, made)}
        calls = sum(m.condensed for m in made)
        costs[name] = {"lm_calls": calls, "cases": len(members), "seconds": round(seconds, 1), "methods": dict(Counter(m.method for m in made))}
        log(f"{name}: {calls} of {len(members)} messages sent to the LM, {seconds:.1f} s")
        register_variant(QueryVariant(name, lambda case, by_id=by_id: list(by_id[case.id].questions), FAMILIES, REWRITERS[name]))
        costs[name]["rewrites"] = {c.id: list(m.questions) for c, m in zip(members, made)}
    return costs


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def merge_rankings(rankings: Sequence[Sequence[str]]) -> list[str]:
    """Several ranked lists -> one: round-robin, each list's best first, repeated ids dropped (how
    the engine merges the lists of several search questions before the generator reads the top)."""
    merged: list[str] = []
    seen: set[str] = set()
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank] not in seen:
                seen.add(ranking[rank])
                merged.append(ranking[rank])
    return merged


def target_ranks(rankings: Sequence[Sequence[str]], relevant: Sequence[str]) -> list[Optional[int]]:
    """The 1-based rank of each relevant id in the round-robin merge of the rankings (one per query
    text of the variant; `merge_rankings`), None when no ranking holds it."""
    from pipeline.metrics import first_relevant_rank

    merged = merge_rankings(rankings)
    return [first_relevant_rank(merged, {node_id}) for node_id in relevant]


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
    from pipeline.metrics import paired_mean_test, summarize

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
            if family == "clean" and "typed" in row["variants"]:  # a rewriter on clean questions: its paired MRR@10 change
                typed = [case_metrics(ranks[c.id]["typed"])["mrr@10"] for c in group]
                row["deltas_vs_typed"] = {
                    v: paired_mean_test([case_metrics(ranks[c.id][v])["mrr@10"] for c in group], typed, samples=samples, seed=seed)
                    for v in row["variants"] if v != "typed"
                }
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


def rank_cache_path(config: Config, stack: str, nodes: Sequence[Any]) -> Path:
    """Where the ranked lists of this stack over this corpus are kept ({run_dir}/cache): keyed by
    the stack, its settings, the identity of the embedder and reranker it reads, and the corpus,
    so a list is reused only where the same stack would rank it the same way."""
    import hashlib
    import json

    from eval.build import artifact_fingerprint

    key = {
        "stack": stack,
        "retrieve": config.to_dict()["retrieve"],
        "rerank": {k: v for k, v in config.to_dict()["rerank"].items() if k != "batch_size"},
        "embedder": artifact_fingerprint(config.finetune.embedder.output) if config.index.finetuned_embedder else config.index.embed_model,
        "reranker": artifact_fingerprint(config.rerank.model) if config.rerank.enabled else None,
        "corpus": hashlib.sha256("\n".join(f"{n.node_id}\t{n.get_content()}" for n in nodes).encode("utf-8")).hexdigest()[:16],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Path(config.run_dir) / "cache" / f"realistic-ranks-{digest}.jsonl"


def rank_with_stack(config: Config, nodes: Sequence[Any], texts: Sequence[str], *, show_progress: bool = True, log: Callable[[str], None] = lambda *_: None) -> tuple[str, dict[str, list[str]]]:
    """The stack's name and the ranked node ids (best first, 20 deep) of every distinct text. Lists
    ranked by an earlier run of the same stack are read from `rank_cache_path`; new ones are
    appended to it as they are made (in chunks: a killed run keeps what it ranked)."""
    from pipeline.fileio import append_lines, read_complete_lines
    from pipeline.metrics import DEPTH
    from rerank.evaluate import evaluate_variants

    stack = retrieval_stack(config)
    unique = list(dict.fromkeys(texts))
    cache = rank_cache_path(config, stack, nodes)
    ranked = {row["text"]: row["ranked"] for row in read_complete_lines(cache)}
    todo = [t for t in unique if t not in ranked]
    log(f"{len(unique) - len(todo)} of {len(unique)} query texts ranked by an earlier run ({cache}); ranking {len(todo)}")
    if todo:
        from pipeline.index import KnowledgeBase, finetuned_embedder_config

        finetuned = stack.startswith("ft-")
        kb = KnowledgeBase.from_nodes(finetuned_embedder_config(config) if finetuned else config, nodes, show_progress=show_progress)  # embedded once for every chunk
        try:
            chunk = 200
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                lists = evaluate_variants(config, nodes, part, [stack], depth=DEPTH, show_progress=show_progress, log=log, **({"finetuned_kb": kb} if finetuned else {"kb": kb}))[stack]
                append_lines(cache, ({"text": t, "ranked": list(r)} for t, r in zip(part, lists)))
                ranked.update(zip(part, lists))
        finally:
            kb.close()
    return stack, {t: ranked[t] for t in unique}


def evaluate_realistic(
    config: Config,
    data_dir: str | Path,
    split: str,
    *,
    hand_dir: Optional[str | Path] = DATA_DIR,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    per_family: Optional[int] = None,
    rank: Optional[Callable[[Sequence[str]], tuple[str, Mapping[str, Sequence[str]]]]] = None,
    rewriters: Sequence[str] = (),
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The benchmark on `split` (val: dev, test: test) of the open-book corpus of `data_dir`.
    `per_family` generated cases per family (default GENERATED_PER_FAMILY); `rank(texts) ->
    (stack name, {text: ranked node ids})` replaces full's stack (tests)."""
    from rewrite import cases as case_builders
    from pipeline.data import open_book_corpus

    per_family = case_builders.GENERATED_PER_FAMILY if per_family is None else per_family

    nodes, _, _ = open_book_corpus(data_dir)
    cases = build_cases(data_dir, split, hand_dir=hand_dir, seed=config.eval.seed, per_family=per_family)
    rewriter_costs = register_rewriters(config, rewriters, cases, show_progress=show_progress, log=log) if rewriters else {}
    variants = [*variants, *[r for r in rewriters if r not in variants]]
    for variant in variants:
        _variant_spec(variant)
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
        "rewriters": rewriter_costs,
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
                name = "typed (the seed question)" if family == "clean" and variant == "typed" else variant
                lines.append(
                    f"| {family} | {source} | {row['n']} | {name} | {_cell(summary, 'mrr@10')} | {_cell(summary, 'recall@1')} | {_cell(summary, 'both@3')} | {_cell(summary, 'both@5')} | "
                    f"{_ratio(ratios, 'mrr@10')} | {_ratio(ratios, 'recall@1')} | {_ratio(ratios, 'both@3')} |"
                )
    lines += ["", "Query variants: " + "; ".join(f"`{name}`: {help}" for name, help in result["variants"].items()) + "."]
    clean = (result["families"].get("clean") or {}).get("all", {})
    for name, test in (clean.get("deltas_vs_typed") or {}).items():
        lines += ["", f"clean, `{name}` - typed, MRR@10: {test['diff']:+.4f} [{test['ci95_low']:+.4f}, {test['ci95_high']:+.4f}] (paired bootstrap over the {clean['n']} questions)."]
    for name, cost in (result.get("rewriters") or {}).items():
        lines += ["", f"`{name}`: {cost['lm_calls']} of {cost['cases']} messages sent to the LM (the rest passed the gate as typed), {cost['seconds']} s batched; methods {cost['methods']}."]
    counts = "; ".join(f"{family}: " + ", ".join(f"{n} {source}" for source, n in by.items() if n) for family, by in result["counts"].items())
    lines += ["", f"Cases: {counts}. {result['query_texts']} distinct query texts searched in {result['seconds']['retrieval']} s."]
    return "\n".join(lines)


CASES_HELP = "Folder with the hand-written cases <split>.jsonl (default: eval/realistic/data, written for the seed data); 'none': generated cases only."


def add_case_arguments(parser: Any) -> None:
    """--cases and --limit, as every command over the realistic cases reads them."""
    parser.add_argument("--cases", metavar="DIR", help=CASES_HELP)
    parser.add_argument("--limit", type=int, metavar="N", help="At most N cases per family (quick runs). Default: all.")


def hand_dir_of(args: Any) -> Optional[str | Path]:
    """The hand-written cases' folder --cases names (None for 'none'; default DATA_DIR)."""
    return None if (args.cases or "").lower() == "none" else (args.cases or DATA_DIR)


def evaluate_cli(config: Config, args: Any, *, default_retrievers: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`eval.retrieval --queries realistic`: check the arguments that do not apply, then run."""
    from pipeline.config import ConfigError

    if args.protocol != "open-book":
        raise ConfigError("--queries realistic needs --protocol open-book (its cases are judged by their targets' own answers, the open-book gold)")
    if args.tune or args.retrievers != default_retrievers:
        raise ConfigError("--queries realistic searches with full's first stage and reranker under the profile; drop --tune and --retrievers (change the stack with --set)")
    hand_dir = hand_dir_of(args)
    rewriters = [r.strip() for r in (getattr(args, "rewriters", None) or "").split(",") if r.strip()]
    unknown = [r for r in rewriters if r not in REWRITERS]
    if unknown:
        raise ConfigError(f"--rewriters: unknown {unknown}; choose among {', '.join(REWRITERS)}")
    return evaluate_realistic(config, config.data.dir, args.split, hand_dir=hand_dir, rewriters=rewriters, show_progress=not args.quiet, log=log)


def headline(result: Mapping[str, Any], *, rewriter: str = "condense-trained") -> str:
    """The front page's table of one retrieval run: per family, the message as typed, `rewriter`'s
    search question(s) and the oracle, with the rewriter's share of the oracle (MRR@10; compound:
    both targets in the top 3, what the generator reads)."""
    lines = [
        f"`{result['split']}` split, {sum(r['n'] for by in result['families'].values() for s, r in by.items() if s == 'all')} cases; "
        f"stack `{result['stack']['runs']}`; [95% interval]; every variant: [results/realistic/](results/realistic/).",
        "",
        f"| family | n | metric | as typed | `{rewriter}` | oracle | `{rewriter}` / oracle |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for family, by_source in result["families"].items():
        row = by_source.get("all")
        if row is None or rewriter not in row["variants"]:
            continue
        metric = "both@3" if family == "compound" else "mrr@10"
        oracle = row["variants"].get("oracle") or row["variants"]["typed"]  # clean: the question is its own oracle
        ratio = row["ratios"].get(rewriter, {}).get(metric) if family != "clean" else row["variants"][rewriter][metric] / oracle[metric]
        lines.append(
            f"| {family} | {row['n']} | {'both@3' if metric == 'both@3' else 'MRR@10'} | {row['variants']['typed'][metric]:.3f} | "
            f"{_cell(row['variants'][rewriter], metric)} | {oracle[metric]:.3f} | {'–' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def run_lines(result: Mapping[str, Any]) -> list[str]:
    """The command, revision and wall time a run recorded (results/*/README.md's first lines)."""
    run = result.get("run", {})
    return ["```bash", run.get("command", "(command not recorded)"), "```", "", f"- git revision: `{run.get('git_revision', 'unknown')}`; wall time {run.get('seconds', '–')} s"]


def section(result: Mapping[str, Any]) -> str:
    """One retrieval run of the benchmark as a README section: how it was run, and the table."""
    lines = [
        f"## Retrieval, split {result['split']}",
        "",
        *run_lines(result),
        f"- searching {result['query_texts']} query texts: {result['seconds']['retrieval']} s",
        f"- data: `{result['data']}` ({result['corpus_size']} passages, every answer of train+val+test); split `{result['split']}`; hand-written cases: `{result.get('hand_cases')}`; generated: at most {result['generated_per_family']} per family, seed {result['seed']}",
        f"- stack: `{result['stack']['runs']}` ({result['stack']['what']}); settings: " + ", ".join(f"{k}={v}" for k, v in result.get("settings", {}).get("full", {}).items()),
        "",
        to_markdown(result),
    ]
    return "\n".join(lines)


def readme(results: Sequence[Mapping[str, Any]], *, title: str = "realistic: query rewriting's benchmark", sections: Optional[Mapping[str, Callable[[Mapping[str, Any]], str]]] = None) -> str:
    """A results folder's README (results/realistic/README.md) from its runs' JSON alone: for each
    run, the command, revision and wall time it recorded and its table. `sections` maps a run's
    kind (`kind_of`) to its renderer (default: this benchmark's retrieval runs)."""
    renderers = {"retrieval": section, **(sections or {})}
    lines = [
        f"# {title}",
        "",
        "Generated by `python -m eval.realistic RUN.json [RUN.json ...] --out README.md` from the runs' own JSON; do not edit by hand.",
        "",
        "Families: `clean` (the seed question itself), `follow-up` (the last turn of a conversation: pronouns, ellipsis, and topic shifts whose last turn stands alone),"
        " `verbose` (one ask wrapped in fluff, red herrings and typos), `compound` (two asks in one message, two relevant passages)."
        " `hand`: written by hand as users type (eval/realistic/data); `generated`: built from the split's own questions (rewrite/cases.py).",
    ]
    for result in results:
        kind = kind_of(result)
        if kind not in renderers:
            raise ValueError(f"no renderer for a {kind} run; known: {', '.join(renderers)}")
        lines += ["", renderers[kind](result)]
    return "\n".join(lines) + "\n"


def kind_of(result: Mapping[str, Any]) -> str:
    """retrieval (eval.retrieval --queries realistic), answers (eval.realistic.answers) or
    latency (eval.bench condense), from the run's own keys."""
    if result.get("queries") == "realistic":
        return "retrieval"
    if "systems" in result and "families" in result:
        return "answers"
    if "warmup" in result and ("families" in result or "settings" in result):  # settings: several prompt-lookup settings side by side
        return "latency"
    raise ValueError("not a realistic-benchmark run: no 'queries': 'realistic', no answers' systems, no latency families")
