"""Shared trainer setup for every fine-tuning command.

- `lora_config(train_cfg)`: the PEFT LoRA config of a `LoraTrainConfig` section.
- `sft_config(...)`: TRL `SFTConfig` for prompt/completion data, loss on the completion only,
  validation loss each epoch, progress bars, checkpoints for resuming.
- `loss_history(log_history)` and `plot_loss_curve(history, path)`: the train/val loss history
  saved beside every adapter, and its PNG.
- `last_checkpoint(work_dir)`: the checkpoint to resume an interrupted run from.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipeline.config import ConfigError, LoraTrainConfig, config_digest, save_resolved_config
from pipeline.fileio import atomic_directory, atomic_write_text, write_json

if TYPE_CHECKING:
    from peft import LoraConfig
    from trl import SFTConfig

    from pipeline.config import Config


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs, so that one seed fixes a whole run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def score_completion_tokens_only() -> bool:
    """Make TRL's fused LM head score only the positions that have a label (the completion) on
    every device, not just on Triton ones.

    TRL projects hidden states through the LM head in tiles and, off Triton devices, does so for
    EVERY position (to keep tile shapes fixed for compilers such as Neuron), then masks the prompt
    positions out. On a CPU that is pure waste: SmolLM2's head is 49,152 x 576, and in a RAFT
    example ~85% of the tokens are prompt (passages), so the head's forward and backward, and the
    entropy/accuracy metrics, cost several times the useful work. The loss is identical either way
    (tests/finetune/test_common.py checks it). Returns whether the switch was found (TRL >= 1.x)."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    if not hasattr(trl_utils, "_use_triton"):
        return False
    if not getattr(trl_utils._use_triton, "_ragft_compact", False):
        original = trl_utils._use_triton

        def compact_everywhere(device: Any) -> bool:
            return True

        compact_everywhere._ragft_compact = True  # type: ignore[attr-defined]
        compact_everywhere._original = original  # type: ignore[attr-defined]
        trl_utils._use_triton = compact_everywhere
    return True


def lora_config(train: LoraTrainConfig, num_layers: int | None = None) -> "LoraConfig":
    """`num_layers` (the model's transformer layers) is needed with `train.top_layers`."""
    from peft import LoraConfig

    layers = None
    if train.top_layers is not None and num_layers:
        layers = list(range(max(0, num_layers - train.top_layers), num_layers))
    return LoraConfig(
        layers_to_transform=layers,
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=list(train.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(train: LoraTrainConfig, *, work_dir: str | Path, seed: int, use_bf16: bool = False, has_eval: bool = True, **extra: Any) -> "SFTConfig":
    """TRL settings shared by the generator and the rewriter.

    Prompt/completion data with `completion_only_loss=True`: the prompt tokens get label -100,
    so the loss (train and val) is on the answer only. Checkpoints go to `work_dir` each epoch
    (the last one is kept) so an interrupted run resumes with `resume_from_checkpoint`.
    """
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(work_dir),
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=train.max_seq_length,
        completion_only_loss=True,
        packing=False,
        eval_strategy="epoch" if has_eval else "no",
        prediction_loss_only=True,  # validation needs the loss only; gathering per-token outputs costs minutes on a CPU
        save_strategy="steps" if train.save_steps else "epoch",
        save_steps=train.save_steps or 500,  # read only with the "steps" strategy
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=5,
        logging_first_step=True,
        # batches of similar lengths: RAFT prompts vary by a few hundred tokens, and padding
        # to the longest example of a random batch wastes that much compute per row
        train_sampling_strategy="group_by_length",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=use_bf16,
        dataloader_num_workers=0,
        # TRL turns activation checkpointing on by default; it only pays off when memory is
        # short (QLoRA on a GPU), and costs ~20% more compute, so it is opt-in here
        **{"disable_tqdm": False, "activation_checkpointing": False, **extra},
    )


def last_checkpoint(work_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder in `work_dir`, or None to start from scratch.

    The Trainer writes a checkpoint in place and its `trainer_state.json` last (older checkpoints
    are rotated away only after that), so a folder without it is one a kill cut short: resuming
    from it would fail on every re-run; the previous complete one is taken instead."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    checkpoints = [p for p in work_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    if not checkpoints:
        return None
    return str(max(checkpoints, key=lambda p: int(p.name.split("-")[-1])))


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Split a Trainer's `state.log_history` into train and val loss points (step, epoch, loss)."""
    train, val = [], []
    for entry in log_history:
        if "loss" in entry:
            train.append({"step": entry.get("step", 0), "epoch": entry.get("epoch", 0.0), "loss": float(entry["loss"])})
        if "eval_loss" in entry:
            val.append({"step": entry.get("step", 0), "epoch": entry.get("epoch", 0.0), "loss": float(entry["eval_loss"])})
    return {"train": train, "val": val}


def plot_loss_curve(history: dict[str, list[dict[str, float]]], path: str | Path, title: str) -> Path:
    """Train (line) and val (markers) loss against the epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if history["train"]:
        ax.plot([p["epoch"] for p in history["train"]], [p["loss"] for p in history["train"]], label="train", lw=1.5)
    if history["val"]:
        ax.plot([p["epoch"] for p in history["val"]], [p["loss"] for p in history["val"]], "o-", label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def train_lora_adapter(
    config: Config,
    train_cfg: LoraTrainConfig,
    *,
    kind: str,
    section: str,
    build_rows: Callable[[Any], tuple[list[dict[str, str]], list[dict[str, str]]]],
    output: str | Path,
    resume: bool = True,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
    save_extra: Callable[[Path], None] | None = None,
    report_extra: Callable[[], dict[str, Any]] | None = None,
    after_training: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """LoRA (QLoRA when 4-bit) SFT of `generator.model` on prompt/completion rows; the one training
    loop of every adapter (generator plain/raft, rewriter).

    `section` names `train_cfg` in the config (finetune.generator) for messages.
    `build_rows(tokenizer)` returns (train rows, val rows). Checkpoints of an interrupted run with
    the same settings are resumed from a hidden work folder beside `output` (the last complete
    checkpoint; the report's `resumed_from_step` says which); the adapter, tokenizer, loss history,
    loss curve, train report and resolved config are written to `output` atomically, so a run
    killed at any point leaves `output` as it was (the temporary folder of a killed save is removed
    by the next run).
    `save_extra(tmp)` adds files to the artifact; `after_training(trainer)` runs before saving
    (tests inspect the in-memory model there). Returns the train report."""
    import time

    from datasets import Dataset
    from trl import SFTTrainer

    from pipeline.models import apply_cpu_threads, check_model_source, cpu_has_native_bf16, load_causal_lm, resolve_device

    started = time.perf_counter()
    gen = config.generator
    output = Path(output)
    seed = config.finetune.seed
    seed_everything(seed)
    apply_cpu_threads(gen.cpu_threads, gen.device)

    model, tokenizer = load_causal_lm(
        check_model_source(config, gen.model, "generator.model"),
        device=gen.device,
        torch_dtype=gen.train_torch_dtype,
        load_in_4bit=gen.load_in_4bit,
        trust_remote_code=gen.trust_remote_code,
        for_training=True,
        allow_pickle=config.security.allow_pickle_weights,
        convert_dir=gen.convert_dir,
    )
    device = resolve_device(gen.device)
    extra: dict[str, Any] = {"use_cpu": device == "cpu"}
    if gen.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        extra["activation_checkpointing"] = True

    train_rows, val_rows = build_rows(tokenizer)
    fit = fit_report(train_rows, tokenizer, train_cfg.max_seq_length)
    log(f"data            {len(train_rows)} train / {len(val_rows)} val examples ({kind}); tokens per example: mean {fit['mean_tokens']}, max {fit['max_tokens']}")
    if fit["no_answer_left"] == len(train_rows):
        raise ConfigError(f"every training prompt is at least {section}.max_seq_length={train_cfg.max_seq_length} tokens long (longest example {fit['max_tokens']}), so no completion token would be trained; raise {section}.max_seq_length or lower finetune.raft.num_passages")
    if fit["truncated"]:
        log(f"warning: {fit['truncated']} train examples exceed {section}.max_seq_length={train_cfg.max_seq_length} and lose completion tokens; raise it or lower generator.max_passage_chars")

    # checkpoints of an interrupted run are reused only if they were made with the same settings
    work_dir = output.parent / f".{output.name}.checkpoints"
    digest = config_digest(config, ["data", "generator", "finetune", "retrieve", "index", "rewrite"]) + f"-{kind}"
    stamp = work_dir / "ragft_digest.txt"
    if work_dir.exists() and (not resume or not stamp.is_file() or stamp.read_text().strip() != digest):
        shutil.rmtree(work_dir)
    atomic_write_text(stamp, digest)
    # a save killed half-way leaves its hidden temporary folder (never the final name); one writer
    # per output is assumed, as for the checkpoint folder, so a leftover is no one's work in progress
    for leftover in output.parent.glob(f".{output.name}.*.tmp"):
        if "." not in leftover.name[len(output.name) + 2 : -len(".tmp")]:  # mkdtemp's part has no dot: not `<name>.v2`'s
            shutil.rmtree(leftover, ignore_errors=True)
    checkpoint = last_checkpoint(work_dir) if resume else None
    if checkpoint:
        log(f"resuming        from {checkpoint}")

    score_completion_tokens_only()
    cpu_autocast = device == "cpu" and gen.train_cpu_autocast
    if cpu_autocast and not cpu_has_native_bf16():
        log("warning: generator.train_cpu_autocast is on, but this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), where autocast is slower than float32: training in float32")
        cpu_autocast = False
    use_bf16 = bool(gen.load_in_4bit or (device.startswith("cuda") and gen.train_torch_dtype in ("auto", "bfloat16")) or cpu_autocast)
    args = sft_config(train_cfg, work_dir=work_dir, seed=seed, use_bf16=use_bf16, has_eval=bool(val_rows), disable_tqdm=not show_progress, **extra)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(train_cfg, getattr(model.config, "num_hidden_layers", None)),
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    layers = f" of the last {train_cfg.top_layers} layers" if train_cfg.top_layers else ""
    log(f"LoRA            r={train_cfg.lora_r} on {', '.join(train_cfg.target_modules)}{layers}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%}); device {device}{', 4-bit NF4' if gen.load_in_4bit else ''}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if after_training is not None:
        after_training(trainer)
    history = loss_history(trainer.state.log_history)
    seconds = round(time.perf_counter() - started, 1)
    n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * train_cfg.epochs
    report = {
        "kind": kind,
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
        "resumed_from_step": int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None,
        **(report_extra() if report_extra else {}),
    }
    with atomic_directory(output) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "loss_history.json", history)
        plot_loss_curve(history, tmp / "loss_curve.png", f"{kind} on {Path(gen.model).name}")
        write_json(tmp / "train_report.json", report)
        if save_extra is not None:
            save_extra(tmp)
        save_resolved_config(config, tmp, extra={k: v for k, v in report.items() if k != "tokens"})
    shutil.rmtree(work_dir, ignore_errors=True)
    val_text = ", ".join(f"{v:.3f}" for v in report["val_loss"]) or "n/a"
    log(f"trained         {report['steps']} steps in {seconds} s ({report['train_tokens_per_second']} train tokens/s); train loss {report['train_loss']:.3f}; val loss per epoch {val_text}; wrote {output}")
    return report


def fit_report(rows: Sequence[dict[str, str]], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """How many examples would lose completion tokens to truncation at `max_length` (TRL keeps
    the start of a sequence), and how many would keep none at all."""
    lengths = [len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]  # + EOS
    over = sum(n > max_length for n in lengths)
    no_answer = sum(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) >= max_length for r in rows)
    return {"max_tokens": max(lengths, default=0), "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1), "truncated": over, "no_answer_left": no_answer}
