"""What the condense step costs per message: the gate alone, and the LM where the gate sends it.

    python -m eval.bench condense --data ../shared/data/seed-technical-qa/splits --split val
    python -m eval.bench condense --adapter none --limit 40        # the base LM (zero-shot) instead
    python -m eval.bench condense --prompt-lookup none,10          # without and with prompt-lookup decoding, interleaved

Each realistic case of the split (rewrite/cases.py; the hand-written ones of eval/realistic/data
and the generated ones) is condensed one message at a time, as a chat turn is, with the trained
condenser (`rewrite.condense_adapter`, or the base LM with `--adapter none`), after
`--warmup` untimed messages. Printed per family: how many messages the gate sent to the LM, and
the wall time of the whole condense step per message, p50 / p90 in ms, over all messages and over
those the LM rewrote. A standalone first turn (the clean family) costs the gate only: its time is
printed in microseconds, and its LM calls (0) are counted, not assumed. The model loads before the
clock starts. With `--prompt-lookup none,10` each message is condensed once per setting
(generator.prompt_lookup_tokens), the settings taking turns message by message so that the
machine's load falls on both alike; the table gives each setting's times and how many of its
rewrites equal the first setting's.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import numpy as np

from eval.realistic.benchmark import add_case_arguments, hand_dir_of
from pipeline.cli import add_io_arguments, run_record
from pipeline.config import ConfigError, add_config_arguments
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from rewrite.cases import FAMILIES, build_cases


def _ms(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(arr, 50)), 1), "p90_ms": round(float(np.percentile(arr, 90)), 1), "mean_ms": round(float(arr.mean()), 1)}


def _lookup_config(config: Any, lookup: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, generator=dataclasses.replace(config.generator, prompt_lookup_tokens=lookup))


def measure(config: Any, split: str, *, adapter: bool, hand_dir: Any, limit: int | None, warmup: int, lookups: Sequence[Any] = ("config",)) -> dict[str, Any]:
    """`lookups`: generator.prompt_lookup_tokens settings measured side by side ("config": the
    config's own)."""
    from llama_index.core.base.llms.types import ChatMessage

    from pipeline.models import load_llm
    from rewrite.condense import Condenser

    cases = build_cases(config.data.dir, split, hand_dir=hand_dir, seed=config.eval.seed)
    if limit:
        by_family = {f: [c for c in cases if c.family == f][:limit] for f in FAMILIES}
        cases = [c for f in FAMILIES for c in by_family[f]]
    settings = [config.generator.prompt_lookup_tokens if lookup == "config" else lookup for lookup in lookups]
    condensers = []
    for lookup in settings:
        llm = load_llm(_lookup_config(config, lookup), adapter=config.rewrite.condense_adapter if adapter else None, verbose=False)
        condensers.append(Condenser(llm, max_new_tokens=config.rewrite.max_new_tokens, max_questions=config.rewrite.n_queries))
    history = {c.id: [ChatMessage(role=t["role"], content=t["content"]) for t in c.history] for c in cases}
    warm = [c for c in cases if condensers[0].gate(c.message, history[c.id])[0]][:warmup]
    for condenser in condensers:
        for case in warm:
            condenser.condense(case.message, history[case.id])
    runs: list[dict[str, Any]] = [{} for _ in settings]
    for family in FAMILIES:
        members = [c for c in cases if c.family == family]
        if not members:
            continue
        every: list[list[float]] = [[] for _ in settings]
        rewritten: list[list[float]] = [[] for _ in settings]
        questions: list[list[tuple[str, ...]]] = [[] for _ in settings]
        for n, case in enumerate(members):
            turn = list(range(len(settings)))
            if n % 2:
                turn.reverse()  # neither setting always runs first
            for k in turn:
                started = time.perf_counter()
                made = condensers[k].condense(case.message, history[case.id])
                seconds = time.perf_counter() - started
                every[k].append(seconds)
                questions[k].append(made.questions)
                if made.condensed:
                    rewritten[k].append(seconds)
        gated_out = [i for i, case in enumerate(members) if not condensers[0].gate(case.message, history[case.id])[0]]
        for k in range(len(settings)):
            row = {"messages": len(members), "lm_calls": len(rewritten[k]), "all": _ms(every[k]), "rewritten": _ms(rewritten[k])}
            row["gated_out_us_p50"] = round(float(np.median([every[k][i] for i in gated_out])) * 1e6, 1) if gated_out else None
            row["same_rewrites_as_first"] = sum(a == b for a, b in zip(questions[k], questions[0]))
            runs[k][family] = row
    base = {"split": split, "adapter": config.rewrite.condense_adapter if adapter else None, "cases": len(cases), "warmup": len(warm)}
    if len(settings) == 1:
        return {**base, "prompt_lookup_tokens": settings[0], "families": runs[0]}
    return {**base, "settings": [{"prompt_lookup_tokens": lookup, "families": families} for lookup, families in zip(settings, runs)]}


def to_markdown(result: dict[str, Any]) -> str:
    if "settings" in result:  # several prompt-lookup settings side by side
        parts = []
        for setting in result["settings"]:
            lookup = setting["prompt_lookup_tokens"]
            parts.append(f"#### prompt-lookup decoding: {lookup if lookup else 'off'}\n\n" + to_markdown({**{k: v for k, v in result.items() if k != "settings"}, **setting}))
            if setting is not result["settings"][0]:
                same = {family: f"{row['same_rewrites_as_first']}/{row['messages']}" for family, row in setting["families"].items()}
                parts[-1] += "\n\nRewrites equal to the first setting's: " + ", ".join(f"{f} {v}" for f, v in same.items()) + "."
        return "\n\n".join(parts)
    lines = [
        f"Condense step per message, split {result['split']}, {'trained condenser ' + str(result['adapter']) if result['adapter'] else 'base LM (zero-shot)'}; one message at a time after {result['warmup']} warm-up messages.",
        "",
        "| family | messages | sent to the LM | all: p50 / p90 ms | rewritten: p50 / p90 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for family, row in result["families"].items():
        every, rewritten = row["all"], row["rewritten"]
        cell = lambda s: f"{s['p50_ms']} / {s['p90_ms']}" if s.get("n") else "–"  # noqa: E731
        lines.append(f"| {family} | {row['messages']} | {row['lm_calls']} | {cell(every)} | {cell(rewritten)} |")
    clean = result["families"].get("clean")
    if clean:
        lines += ["", f"A standalone first turn (clean, gated out): {clean['gated_out_us_p50']} µs p50 for the gate, no LM call."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.bench condense", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder whose realistic cases are condensed. Default: data.dir of the profile.",
        split="Split of the cases (val: dev; test). Default: val.",
        split_default="val",
        formats="md (a table) or json.",
        out="Also write the result as JSON here.",
    )
    parser.add_argument("--adapter", choices=["trained", "none"], default="trained", help="trained: rewrite.condense_adapter (python -m finetune.condenser); none: the base LM with the same prompt. Default: trained.")
    add_case_arguments(parser)
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="Untimed messages through the LM first. Default: 3.")
    parser.add_argument("--prompt-lookup", default=None, metavar="LIST", help="generator.prompt_lookup_tokens settings to measure side by side, interleaved message by message, e.g. none,10 (none: off). Default: the config's own setting only.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.cli import config_for_data

        config = config_for_data(args)
        hand_dir = hand_dir_of(args)
        lookups: list[Any] = ["config"]
        if args.prompt_lookup:
            lookups = []
            for item in args.prompt_lookup.split(","):
                item = item.strip().lower()
                if item in ("none", "off", "0"):
                    lookups.append(None)
                elif item.isdigit():
                    lookups.append(int(item))
                else:
                    raise ConfigError(f"--prompt-lookup {args.prompt_lookup!r}: {item!r} is neither none nor a token count; e.g. --prompt-lookup none,10")
        result = measure(config, args.split, adapter=args.adapter == "trained", hand_dir=hand_dir, limit=args.limit, warmup=args.warmup, lookups=lookups)
        result["run"] = run_record("eval.bench condense", argv, started)
        if args.out:
            write_json(args.out, result)
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
