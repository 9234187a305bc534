"""Fine-tune the generator with LoRA (QLoRA when 4-bit is configured): plain or RAFT.

    python -m finetune.generator --config tiny --mode plain       # question -> answer
    python -m finetune.generator --config tiny --mode raft        # question + k retrieved passages -> answer
    python -m finetune.generator --config mistral-7b --mode raft  # 4-bit QLoRA on CUDA
    python -m finetune.generator --config tiny --mode plain --set finetune.generator.limit=64 --out /tmp/quick

`plain` is the reference experiment's fine-tuned baseline: the no-context prompt of
pipeline/generate.py -> the reference answer. `raft` trains on the with-context prompt over RAFT
triples (finetune/raft.py: the oracle passage with probability finetune.raft.oracle_prob among
distractors mined with the project's retriever; needs `python -m pipeline.index` first). Prompts
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
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from finetune.common import atomic_directory, last_checkpoint, lora_config, loss_history, plot_loss_curve, seed_everything, sft_config
from pipeline.config import Config, ConfigError, add_config_arguments, config_digest, config_from_args, save_resolved_config
from pipeline.data import DataError, load_split
from pipeline.fileio import atomic_write_text, write_json
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
    val_records = load_split(config.data.dir, "val")
    if mode == "plain":
        rows = lambda records: [training_example(r["question"], r["answer"], None, tokenizer) for r in records]  # noqa: E731
        return rows(train_records), rows(val_records), {}
    from finetune.raft import build_split, raft_retriever

    retriever = retriever or raft_retriever(config)
    raft = {
        "train": build_split(config, "train", retriever=retriever, limit=limit, show_progress=show_progress),
        "val": build_split(config, "val", retriever=retriever, show_progress=show_progress),
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


def _fit_report(rows: Sequence[dict[str, str]], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """How many examples would lose answer tokens to truncation at `max_length`."""
    lengths = [_n_tokens(tokenizer, r) for r in rows]
    over = sum(n > max_length for n in lengths)
    no_answer = sum(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) >= max_length for r in rows)
    return {"max_tokens": max(lengths, default=0), "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1), "truncated": over, "no_answer_left": no_answer}


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
    """Train one adapter and save it with its config, loss history and curve. Returns the report.
    `after_training(trainer)` is called before saving (tests inspect the in-memory model there)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from pipeline.models import apply_cpu_threads, load_causal_lm, resolve_device

    started = time.perf_counter()
    train_cfg = config.finetune.generator
    gen = config.generator
    output = Path(output or output_dir(config, mode))
    seed = config.finetune.seed
    seed_everything(seed)
    apply_cpu_threads(gen.cpu_threads, gen.device)

    model, tokenizer = load_causal_lm(gen.model, device=gen.device, torch_dtype=gen.torch_dtype, load_in_4bit=gen.load_in_4bit, trust_remote_code=gen.trust_remote_code, for_training=True)
    device = resolve_device(gen.device)
    extra: dict[str, Any] = {"use_cpu": device == "cpu"}
    if gen.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        extra["activation_checkpointing"] = True

    train_rows, val_rows, raft = build_examples(config, mode, tokenizer, retriever=retriever, show_progress=show_progress)
    fit = _fit_report(train_rows, tokenizer, train_cfg.max_seq_length)
    log(f"data            {len(train_rows)} train / {len(val_rows)} val examples ({mode}); tokens per example: mean {fit['mean_tokens']}, max {fit['max_tokens']}")
    if fit["no_answer_left"] == len(train_rows):
        raise ConfigError(f"every training prompt is at least finetune.generator.max_seq_length={train_cfg.max_seq_length} tokens long (longest example {fit['max_tokens']}), so no answer token would be trained; raise finetune.generator.max_seq_length or lower finetune.raft.num_passages")
    if fit["truncated"]:
        log(f"warning: {fit['truncated']} train examples exceed finetune.generator.max_seq_length={train_cfg.max_seq_length} and lose answer tokens; raise it or lower generator.max_passage_chars")
    if raft:
        from finetune.raft import oracle_fraction

        log(f"RAFT            oracle in {oracle_fraction(raft['train']):.1%} of train contexts (target {config.finetune.raft.oracle_prob:.0%}), {config.finetune.raft.num_passages} passages each, retriever {config.finetune.raft.retriever}")

    # checkpoints of an interrupted run are reused only if they were made with the same settings
    work_dir = output.parent / f".{output.name}.checkpoints"
    digest = config_digest(config, ["data", "generator", "finetune", "retrieve", "index"]) + f"-{mode}"
    stamp = work_dir / "ragft_digest.txt"
    if work_dir.exists() and (not resume or not stamp.is_file() or stamp.read_text().strip() != digest):
        shutil.rmtree(work_dir)
    atomic_write_text(stamp, digest)
    checkpoint = last_checkpoint(work_dir) if resume else None
    if checkpoint:
        log(f"resuming        from {checkpoint}")

    use_bf16 = bool(gen.load_in_4bit or (device.startswith("cuda") and gen.torch_dtype in ("auto", "bfloat16")))
    args = sft_config(train_cfg, work_dir=work_dir, seed=seed, use_bf16=use_bf16, has_eval=bool(val_rows), disable_tqdm=not show_progress, **extra)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(train_cfg),
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    log(f"LoRA            r={train_cfg.lora_r} on {', '.join(train_cfg.target_modules)}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%}); device {device}{', 4-bit NF4' if gen.load_in_4bit else ''}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if after_training is not None:
        after_training(trainer)
    history = loss_history(trainer.state.log_history)
    seconds = round(time.perf_counter() - started, 1)
    n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * train_cfg.epochs
    report = {
        "mode": mode,
        "base_model": gen.model,
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        "epochs": train_cfg.epochs,
        "steps": trainer.state.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "val_loss": [round(p["loss"], 4) for p in history["val"]],
        "train_tokens_per_second": round(n_tokens / max(1e-9, result.metrics.get("train_runtime", seconds)), 1),
        "tokens": fit,
        "trainable_parameters": trainable,
        "seconds": seconds,
    }
    if raft:
        from finetune.raft import oracle_fraction

        report["raft_oracle_fraction"] = round(oracle_fraction(raft["train"]), 4)

    with atomic_directory(output) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "loss_history.json", history)
        plot_loss_curve(history, tmp / "loss_curve.png", f"generator ({mode}) on {Path(gen.model).name}")
        write_json(tmp / "train_report.json", report)
        if raft:
            from finetune.raft import write_examples

            for split, examples in raft.items():
                write_examples(examples, tmp / f"raft_{split}.jsonl")
        save_resolved_config(config, tmp, extra={"kind": f"generator-adapter-{mode}", **{k: v for k, v in report.items() if k != "tokens"}})
    shutil.rmtree(work_dir, ignore_errors=True)
    val_text = ", ".join(f"{v:.3f}" for v in report["val_loss"]) or "n/a"
    log(f"trained         {report['steps']} steps in {seconds} s ({report['train_tokens_per_second']} train tokens/s); train loss {report['train_loss']:.3f}; val loss per epoch {val_text}; wrote {output}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.generator",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, required=True, help="plain: question -> answer (no context). raft: question + retrieved passages (oracle with probability finetune.raft.oracle_prob) -> answer.")
    parser.add_argument("--out", metavar="DIR", help="Adapter folder. Default: finetune.generator.output (plain) or finetune.raft.output (raft).")
    parser.add_argument("--no-resume", action="store_true", help="Ignore checkpoints of an interrupted run with the same settings and start over.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = []
    if args.out is not None:
        key = "finetune.raft.output" if args.mode == "raft" else "finetune.generator.output"
        overrides.append(f"{key}={json.dumps(args.out)}")
    try:
        config = config_from_args(args, overrides)
        train_generator(config, args.mode, resume=not args.no_resume)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from pipeline.index import KnowledgeBaseError
        from pipeline.models import ModelLoadError, ModelNotFoundError

        if isinstance(exc, (KnowledgeBaseError, ModelLoadError, ModelNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
