"""Fine-tune the generator with LoRA (QLoRA when 4-bit is configured): plain or RAFT.

    python -m finetune.generator --config tiny --mode plain       # question -> answer
    python -m finetune.generator --config tiny --mode raft        # question + k retrieved passages -> answer
    python -m finetune.generator --config mistral-7b --mode raft  # 4-bit QLoRA on CUDA
    python -m finetune.generator --config tiny --mode plain --set finetune.generator.limit=64 --out /tmp/quick

`plain` is the reference experiment's fine-tuned baseline: the no-context prompt of
pipeline/generate.py -> the reference answer. `raft` trains on the with-context prompt over
retrieved contexts (finetune/raft.py; needs `python -m pipeline.index` first, and the reranker for
leave-one-out): with `finetune.raft.context: loo` (default) the question's top passages from
`full`'s own retriever and reranker with its own pair left out, as a closed-book test question
sees them; with `oracle`, RAFT's mix of the oracle passage (probability finetune.raft.oracle_prob)
among distractors mined with `finetune.raft.retriever`. Prompts
come from `pipeline.generate.training_example`, the same functions the engine uses at inference.

Training: TRL SFTTrainer + PEFT LoRA on `finetune.generator.target_modules`, hyperparameters from
`finetune.generator` (both modes); loss on the completion (answer) tokens only; validation loss on
the val split after each epoch; checkpoints each epoch in a hidden work folder beside the output,
from which an interrupted run resumes (`--no-resume` starts over).

Writes (atomically: built under a temporary name, renamed when complete) to
finetune.generator.output (plain) or finetune.raft.output (raft): adapter_config.json +
adapter_model.safetensors, the tokenizer, loss_history.json (train/val points), loss_curve.png,
train_report.json, the RAFT triples (raft_train.jsonl, raft_val.jsonl) and the resolved config.
Load it with `pipeline.models.load_llm(config, adapter=<folder>)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from finetune.common import train_lora_adapter
from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args
from pipeline.data import load_split
from pipeline.errors import run_cli
from pipeline.generate import training_example

MODES = ("plain", "raft")


def output_dir(config: Config, mode: str) -> Path:
    return Path(config.finetune.raft.output if mode == "raft" else config.finetune.generator.output)


def build_examples(
    config: Config,
    mode: str,
    tokenizer: Any,
    *,
    retriever: Any = None,
    show_progress: bool = True,
) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, list[Any]]]:
    """(train rows, val rows, RAFT examples by split) as TRL prompt/completion rows."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    limit = config.finetune.generator.limit
    max_chars = config.generator.max_passage_chars
    train_records = load_split(config.data.dir, "train")[:limit]
    val_records = load_split(config.data.dir, "val")[: config.finetune.generator.eval_limit]
    if mode == "plain":
        rows = lambda records: [training_example(r["question"], r["answer"], None, tokenizer) for r in records]  # noqa: E731
        return rows(train_records), rows(val_records), {}
    from finetune.raft import build_split, raft_reranker, raft_retriever

    retriever = retriever or raft_retriever(config)
    reranker = raft_reranker(config)  # one cross-encoder for both splits
    raft = {
        "train": build_split(config, "train", retriever=retriever, reranker=reranker, limit=limit, show_progress=show_progress),
        "val": build_split(config, "val", retriever=retriever, reranker=reranker, limit=config.finetune.generator.eval_limit, show_progress=show_progress),
    }
    budget = config.finetune.generator.max_seq_length
    rows = lambda examples: [fitted_example(e.question, e.target, list(e.passages), tokenizer, max_chars, budget) for e in examples]  # noqa: E731
    return rows(raft["train"]), rows(raft["val"]), raft


def _n_tokens(tokenizer: Any, row: dict[str, str]) -> int:
    return len(tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS


def fitted_example(question: str, target: str, passages: list[str], tokenizer: Any, max_chars: Optional[int], budget: int) -> dict[str, str]:
    """The with-context training example, with passages cut shorter (halving the per-passage
    character limit, down to 64) when prompt + answer would exceed `budget` tokens: TRL keeps the
    start of a sequence, so an over-long example would lose the very answer it should teach."""
    row = training_example(question, target, passages, tokenizer, max_passage_chars=max_chars)
    limit = max_chars or max((len(p) for p in passages), default=0)
    while _n_tokens(tokenizer, row) > budget and limit > 64:
        limit = max(64, limit // 2)
        row = training_example(question, target, passages, tokenizer, max_passage_chars=limit)
    return row


def train_generator(
    config: Config,
    mode: str,
    *,
    output: str | Path | None = None,
    retriever: Any = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
    after_training: Optional[Callable[[Any], None]] = None,
) -> dict[str, Any]:
    """Train one adapter and save it with its config, loss history and curve (and, for RAFT, its
    triples). Returns the report. `after_training(trainer)` is called before saving (tests inspect
    the in-memory model there). The loop itself is finetune.common.train_lora_adapter."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    raft: dict[str, list[Any]] = {}

    def build_rows(tokenizer: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        train_rows, val_rows, made = build_examples(config, mode, tokenizer, retriever=retriever, show_progress=show_progress)
        raft.update(made)
        if raft:
            from finetune.raft import context_size, oracle_fraction

            if config.finetune.raft.context == "loo":
                reranked = " + the cross-encoder" if config.rerank.enabled else ""
                log(f"RAFT            leave-one-out contexts: the top {context_size(config)} passages of full's retriever ({config.retrieve.mode}){reranked}, the question's own pair left out")
            else:
                log(f"RAFT            oracle in {oracle_fraction(raft['train']):.1%} of train contexts (target {config.finetune.raft.oracle_prob:.0%}), {config.finetune.raft.num_passages} passages each, retriever {config.finetune.raft.retriever}")
        return train_rows, val_rows

    def report_extra() -> dict[str, Any]:
        from finetune.raft import oracle_fraction

        return {"mode": mode, **({"raft_oracle_fraction": round(oracle_fraction(raft["train"]), 4)} if raft else {})}

    def save_extra(tmp: Path) -> None:
        from finetune.raft import write_examples

        for split, examples in raft.items():
            write_examples(examples, tmp / f"raft_{split}.jsonl")

    return train_lora_adapter(
        config,
        config.finetune.generator,
        section="finetune.generator",
        kind=f"generator-adapter-{mode}",
        build_rows=build_rows,
        output=output or output_dir(config, mode),
        resume=resume,
        log=log,
        show_progress=show_progress,
        save_extra=save_extra,
        report_extra=report_extra,
        after_training=after_training,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.generator",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, required=True, help="plain: question -> answer (no context). raft: question + retrieved passages (oracle with probability finetune.raft.oracle_prob) -> answer.")
    add_io_arguments(parser, out="Adapter folder. Default: finetune.generator.output (plain) or finetune.raft.output (raft).", out_metavar="DIR")
    parser.add_argument("--no-resume", action="store_true", help="Ignore checkpoints of an interrupted run with the same settings and start over.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = []
    if args.out is not None:
        key = "finetune.raft.output" if args.mode == "raft" else "finetune.generator.output"
        overrides.append(f"{key}={json.dumps(args.out)}")

    def body() -> None:
        config = config_from_args(args, overrides)
        train_generator(config, args.mode, resume=not args.no_resume)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
