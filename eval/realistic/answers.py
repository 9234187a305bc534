"""Answers to realistic messages: `full` (with its condense step) against systems that read the message as typed.

    python -m eval.realistic.answers --data ../shared/data/seed-technical-qa/splits --split test \\
        --out results/realistic/answers-test.json

Every non-clean case of the split (rewrite/cases.py: hand-written and generated follow-ups,
verbose and compound messages) is answered by each system, and each answer is scored against the
case's reference: its target's seed answer (a compound case: its two answers, joined). Systems:

- `full`: a chat turn, as `build_chat_engine(config, system="full")` runs it: the condense step
  (the gate, then the trained condenser, `rewrite.condense_adapter`) reads the conversation and the
  message, and full's query engine answers the standalone question(s). The condense step of every
  case runs in one batched pass and the answers in another (the engine's `query_batch`), the same
  results as one turn at a time;
- `full[KEY=VALUE]` (`--full-variant`, repeatable): `full` the same way under one setting changed,
  e.g. `agent.max_rounds=2` (the re-query round), paired against `full` over the same cases;
- the others (`--systems`, default full-no-rewrite and rag_vanilla): their query engine answers
  the message as typed (a chat without a condense step).

Printed: ROUGE-L and BERTScore F1 (eval.bertscore_model) per family with 95% intervals, and the
paired difference of `full` against each other system over the same cases. The predictions are
written beside --out as `<stem>.predictions.jsonl`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Mapping, Sequence

from eval.metrics import BertScoreModel, compute_answer_scores, paired_answer_tests
from eval.realistic.benchmark import DATA_DIR, add_case_arguments, hand_dir_of
from pipeline.cli import add_io_arguments, config_for_data, finish_run
from pipeline.config import ConfigError, add_config_arguments
from pipeline.data import load_split
from pipeline.errors import run_cli
from rewrite.cases import Case, build_cases

METRICS = ("rougeL", "bertscore_f1")


def references(data_dir: Any, split: str, cases: Sequence[Case]) -> list[str]:
    answers = {r["question"]: r["answer"] for r in load_split(data_dir, split)}
    return [" ".join(answers[t] for t in case.targets) for case in cases]


def answer_full(config: Any, cases: Sequence[Case], *, components: Any, show_progress: bool) -> list[Any]:
    """full's answers as chat turns: condense (batched), then full's query engine (batched)."""
    from llama_index.core.base.llms.types import ChatMessage

    from pipeline.chat import default_condenser
    from pipeline.engine import build_query_engine
    from pipeline.systems import get_system

    spec = get_system("full", config)
    condenser = default_condenser(config, spec, components)
    made = condenser.condense_many([(c.message, [ChatMessage(role=t["role"], content=t["content"]) for t in c.history]) for c in cases], show_progress=show_progress)
    for item in made:
        if item.condensed:
            components.remember_condensed(spec.rewriter_adapter, item)
    responses = build_query_engine(config, "full", components=components).query_batch([m.question for m in made], show_progress=show_progress)
    for response, item in zip(responses, made):
        response.metadata["condense"] = item.as_dict()
    return responses


def evaluate_answers(config: Any, split: str, systems: Sequence[str], *, variants: Mapping[str, Any] = {}, hand_dir: Any = DATA_DIR, limit: int | None = None, show_progress: bool = True, log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from pipeline.engine import Components, build_query_engine

    cases = [c for c in build_cases(config.data.dir, split, hand_dir=hand_dir, seed=config.eval.seed) if c.family != "clean"]
    if limit:
        cases = [c for f in ("follow-up", "verbose", "compound") for c in [x for x in cases if x.family == f][:limit]]
    refs = references(config.data.dir, split, cases)
    components = Components(config)
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    rows: list[dict[str, Any]] = [{"id": c.id, "family": c.family, "source": c.source, "message": c.message, "reference": r} for c, r in zip(cases, refs)]
    for system in ["full", *variants, *systems]:
        started = time.perf_counter()
        if system == "full":
            responses = answer_full(config, cases, components=components, show_progress=show_progress)
        elif system in variants:  # its own components: a Components serves one config
            responses = answer_full(variants[system], cases, components=Components(variants[system]), show_progress=show_progress)
        else:
            responses = build_query_engine(config, system, components=components).query_batch([c.message for c in cases], show_progress=show_progress)
        seconds[system] = round(time.perf_counter() - started, 1)
        answers[system] = [str(r.response or "") for r in responses]
        for row, response in zip(rows, responses):
            meta = response.metadata or {}
            row[system] = {"answer": str(response.response or ""), "search_question": meta.get("search_question"), "sources": [n.node.node_id for n in response.source_nodes], "rounds": len(meta.get("rounds") or []), "not_found": bool(meta.get("not_found"))}
        log(f"{system}: {len(cases)} answers in {seconds[system]} s")
    scorer = BertScoreModel(config.eval.bertscore_model, allow_fallback=True)
    result: dict[str, Any] = {"split": split, "data": str(config.data.dir), "cases": len(cases), "systems": ["full", *variants, *systems], "seconds": seconds, "families": {}}
    result["declined"] = {s: sum(row[s]["not_found"] for row in rows) for s in ["full", *variants, *systems]}
    result["retried"] = {s: sum(row[s]["rounds"] > 1 for row in rows) for s in ["full", *variants]}
    for family in ("all", "follow-up", "verbose", "compound"):
        index = [i for i, c in enumerate(cases) if family == "all" or c.family == family]
        if not index:
            continue
        scores = {s: compute_answer_scores([answers[s][i] for i in index], [refs[i] for i in index], bertscore=scorer) for s in answers}
        summary = {s: {m: v for m, v in sc.summary(samples=config.eval.bootstrap_samples, seed=config.eval.seed).items() if m in (*METRICS, "ci95", "n")} for s, sc in scores.items()}
        for s in summary:
            summary[s]["ci95"] = {m: summary[s]["ci95"][m] for m in METRICS if m in summary[s]["ci95"]}
        deltas = {s: {m: v for m, v in paired_answer_tests(scores["full"], scores[s], samples=config.eval.bootstrap_samples, seed=config.eval.seed).items() if m in METRICS} for s in [*variants, *systems]}
        result["families"][family] = {"n": len(index), "systems": summary, "full_minus": deltas}
    result["model_for_bertscore"] = scorer.info() if hasattr(scorer, "info") else None
    return result, rows


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Answers to realistic messages, split {result['split']} ({result['cases']} cases; reference: the target's seed answer, two joined for compound)",
        "",
        "| family | n | system | ROUGE-L | BERTScore F1 | full - system: ROUGE-L | full - system: BERTScore |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for family, block in result["families"].items():
        for system, summary in block["systems"].items():
            cell = lambda m: f"{summary[m]:.4f} [{summary['ci95'][m][0]:.4f}, {summary['ci95'][m][1]:.4f}]" if m in summary else "–"  # noqa: E731
            delta = block["full_minus"].get(system, {})
            dcell = lambda m: f"{delta[m]['diff']:+.4f} [{delta[m]['ci95_low']:+.4f}, {delta[m]['ci95_high']:+.4f}]" if m in delta else "–"  # noqa: E731
            lines.append(f"| {family} | {block['n']} | {system} | {cell('rougeL')} | {cell('bertscore_f1')} | {dcell('rougeL')} | {dcell('bertscore_f1')} |")
    if "declined" in result:
        lines += ["", "Declined (not in the knowledge base): " + ", ".join(f"{s} {v}" for s, v in result["declined"].items()) + "; retried (more than one round): " + ", ".join(f"{s} {v}" for s, v in result["retried"].items()) + "."]
    lines += ["", "Seconds per system: " + ", ".join(f"{s} {v}" for s, v in result["seconds"].items()) + "."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.realistic.answers", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder. Default: data.dir of the profile; other data uses the artifacts eval.compare built for it.",
        split="Split of the cases (val: dev; test, run once). Default: test.",
        split_default="test",
        formats="md (a table) or json.",
        out="Write the result as JSON here (and the predictions beside it).",
    )
    parser.add_argument("--systems", default="full-no-rewrite,rag_vanilla", metavar="LIST", help="Systems compared with full, answering the message as typed. Default: full-no-rewrite,rag_vanilla.")
    parser.add_argument("--full-variant", action="append", default=[], metavar="KEY=VALUE", help="Also answer as full with this one setting changed (repeatable), e.g. agent.max_rounds=2, reported as full[KEY=VALUE] and paired against full.")
    add_case_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.systems import SYSTEM_NAMES

        config = config_for_data(args)
        systems = [s.strip() for s in args.systems.split(",") if s.strip() and s.strip() != "full"]
        unknown = [s for s in systems if s not in SYSTEM_NAMES]
        if unknown:
            raise ConfigError(f"--systems: unknown {unknown}; choose among {', '.join(SYSTEM_NAMES)}")
        bad = [v for v in args.full_variant if "=" not in v]
        if bad:
            raise ConfigError(f"--full-variant {bad[0]!r}: a setting as SECTION.KEY=VALUE, e.g. agent.max_rounds=2")
        variants = {f"full[{v}]": config_for_data(args, [v]) for v in args.full_variant}
        hand_dir = hand_dir_of(args)
        result, rows = evaluate_answers(config, args.split, systems, variants=variants, hand_dir=hand_dir, limit=args.limit, show_progress=not args.no_progress)
        finish_run(args, "eval.realistic.answers", argv, started, result, to_markdown, rows=rows, rows_suffix=".predictions.jsonl")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
