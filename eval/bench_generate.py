"""Generation throughput: batched vs one-at-a-time (questions/s, tokens/s and their ratio).

    python -m eval.bench generate                              # tiny profile, 32 demo test questions
    python -m eval.bench generate --questions 64 --batch-size 16 --context
    python -m eval.bench generate --config cpu --questions 16 --format json

Both runs answer the same prompts (pipeline.generate's answer prompt for the first N questions of
the split; with --context, each with its dense top-`generator.context_top_k` passages, as
rag_vanilla does) with the same greedy settings through `LocalCausalLM.generate_batch`: once in
batches of `--batch-size` (left padding, longest prompts first: the evaluation path of
`query_batch`) and once with batch size 1 (what a loop of `engine.query` calls does). The model
loads and is warmed up before either clock starts. Tokens are the generated tokens up to the
first end-of-sequence token. It also reports how many answers are identical in both runs: greedy
decoding with padding is equal up to floating-point rounding, so a few may differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args
from pipeline.data import SPLITS, DataError, load_split
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text


def build_prompts(config: Config, llm: Any, questions: Sequence[str], *, context: bool, kb: Any = None) -> list[str]:
    """The answer prompts of `questions`; with `context`, each with its dense top-k passages from
    `kb` (default: the persisted index of `config`)."""
    from pipeline.generate import answer_messages, render_prompt

    passages: list[Any] = [None] * len(questions)
    if context:
        from pipeline.retrieve import build_retriever

        retriever = build_retriever(config, mode="dense", top_k=config.generator.context_top_k, kb=kb)
        passages = [[hit.node.get_content() for hit in retriever.retrieve(q)] for q in questions]
    return [render_prompt(answer_messages(q, p, max_passage_chars=config.generator.max_passage_chars), llm.tokenizer) for q, p in zip(questions, passages)]


def _timed_generate(llm: Any, prompts: Sequence[str], batch_size: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    outputs = llm.generate_batch(prompts, batch_size=batch_size, show_progress=False)
    return outputs, time.perf_counter() - started


def run_benchmark(config: Config, *, questions: int = 32, batch_size: int | None = None, split: str = "test", context: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    from pipeline.models import load_llm, resolve_model

    if config.generator.backend != "hf":
        raise ConfigError(f"the generation benchmark times a local model; generator.backend={config.generator.backend!r} (set it to hf)")
    resolve_model(config.generator.model)  # a missing model fails here with the fix
    batch_size = batch_size or config.generator.batch_size
    records = load_split(config.data.dir, split)[:questions]
    if not records:
        raise DataError(f"the {split} split of {config.data.dir} is empty")
    llm = load_llm(config, adapter=None, verbose=False)
    prompts = build_prompts(config, llm, [r["question"] for r in records], context=context)
    llm.generate_batch(prompts[:2], batch_size=2, show_progress=False)  # load + warm up (first-call allocations)

    log(f"batched: {len(prompts)} prompts in batches of {batch_size}")
    batched, batched_s = _timed_generate(llm, prompts, batch_size)
    log(f"one at a time: {len(prompts)} prompts")
    single, single_s = _timed_generate(llm, prompts, 1)

    def tokens(texts: Sequence[str]) -> int:
        # the decoded answers re-encoded: the generated tokens up to the first end of sequence
        return sum(len(ids) for ids in llm.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    rows = {}
    for name, texts, seconds in (("batched", batched, batched_s), ("one_at_a_time", single, single_s)):
        n_tokens = tokens(texts)
        rows[name] = {"seconds": round(seconds, 3), "questions_per_s": round(len(texts) / seconds, 3), "tokens": n_tokens, "tokens_per_s": round(n_tokens / seconds, 1)}
    import torch

    return {
        "model": config.generator.model,
        "device": llm.model.device.type,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "questions": len(prompts),
        "context": context,
        "batch_size": batch_size,
        "max_new_tokens": config.generator.max_new_tokens,
        **rows,
        "speedup_questions_per_s": round(rows["batched"]["questions_per_s"] / rows["one_at_a_time"]["questions_per_s"], 2),
        "speedup_tokens_per_s": round(rows["batched"]["tokens_per_s"] / rows["one_at_a_time"]["tokens_per_s"], 2),
        "identical_answers": sum(a == b for a, b in zip(batched, single)),
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Generation benchmark: {result['model']} on {result['device']} ({result['cpus']} CPUs, {result['torch_threads']} torch threads, "
        f"load average {result['load_avg_1m']} at the end); {result['questions']} questions{' with retrieved context' if result['context'] else ''}, "
        f"greedy, max_new_tokens {result['max_new_tokens']}",
        "",
        "| mode | seconds | questions/s | tokens | tokens/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (("batched", f"batched (batch {result['batch_size']})"), ("one_at_a_time", "one at a time")):
        row = result[name]
        lines.append(f"| {label} | {row['seconds']:.2f} | {row['questions_per_s']:.2f} | {row['tokens']} | {row['tokens_per_s']:.1f} |")
    lines += [
        "",
        f"batched / one-at-a-time: {result['speedup_questions_per_s']:.2f}x questions/s, {result['speedup_tokens_per_s']:.2f}x tokens/s; "
        f"identical answers: {result['identical_answers']} of {result['questions']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench generate",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--questions", type=int, default=32, help="Questions answered in each run (the first N of the split). Default: 32.")
    parser.add_argument("--batch-size", type=int, default=None, help="Batch size of the batched run. Default: generator.batch_size of the profile (16 in tiny).")
    parser.add_argument("--split", choices=SPLITS, default="test", help="Split the questions come from. Default: test.")
    parser.add_argument("--context", action="store_true", help="Put each question's dense top-k passages in its prompt (needs the index: python -m pipeline.index).")
    parser.add_argument("--format", choices=("md", "json"), default="md", help="Print a Markdown table (md) or JSON.")
    parser.add_argument("--out", metavar="FILE", help="Also write the JSON result to FILE (atomically).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--questions", args.questions), ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            print(f"error: {flag} must be > 0; got {value}", file=sys.stderr)
            return 2

    def body() -> None:
        config = config_from_args(args)
        result = run_benchmark(config, questions=args.questions, batch_size=args.batch_size, split=args.split, context=args.context, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))
        if args.out:
            atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
