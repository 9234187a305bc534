"""Shared trainer setup for every fine-tuning command.

- `atomic_directory(output)`: build an artifact folder under a temporary name and rename it into
  place only when complete, so a half-written adapter or model is never found at `output`.
- `lora_config(train_cfg)`: the PEFT LoRA config of a `LoraTrainConfig` section.
- `sft_config(...)`: TRL `SFTConfig` for prompt/completion data, loss on the completion only,
  validation loss each epoch, progress bars, checkpoints for resuming.
- `loss_history(log_history)` and `plot_loss_curve(history, path)`: the train/val loss history
  saved beside every adapter, and its PNG.
- `last_checkpoint(work_dir)`: the checkpoint to resume an interrupted run from.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from pipeline.config import LoraTrainConfig

if TYPE_CHECKING:
    from peft import LoraConfig
    from trl import SFTConfig


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs, so that one seed fixes a whole run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_directory(output: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `output`; on success it replaces `output` at once.

    The temporary folder sits in the same parent (same file system), so the final step is two
    renames: an older `output` is moved aside, the new folder takes its name, the old one is
    deleted. On an exception the temporary folder is removed and `output` is left as it was.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final artifact is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / "previous")
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def lora_config(train: LoraTrainConfig) -> "LoraConfig":
    from peft import LoraConfig

    return LoraConfig(
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
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=5,
        logging_first_step=True,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=use_bf16,
        disable_tqdm=False,
        dataloader_num_workers=0,
        **extra,
    )


def last_checkpoint(work_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder in `work_dir`, or None to start from scratch."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    checkpoints = [p for p in work_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
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
