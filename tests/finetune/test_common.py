"""Shared trainer setup (finetune/common.py): atomic artifact folders, resume, loss history."""

from __future__ import annotations

import pytest

from finetune.common import atomic_directory, last_checkpoint, lora_config, loss_history, plot_loss_curve, sft_config
from pipeline.config import load_config


def test_atomic_directory_replaces_only_on_success(tmp_path):
    out = tmp_path / "adapter"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
        assert not out.exists()  # nothing at the final name while it is being written
    assert (out / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (out / "weights").read_text() == "v1"  # a half adapter never becomes final
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary leftovers


def test_last_checkpoint_is_the_highest_complete_step(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    for name in ("checkpoint-9", "checkpoint-12", "checkpoint-x", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-12")
    # a kill while the Trainer wrote checkpoint-15 (trainer_state.json comes last): skipped
    (tmp_path / "checkpoint-15").mkdir()
    (tmp_path / "checkpoint-15" / "adapter_model.safetensors").write_bytes(b"half")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-12")


def test_loss_history_splits_train_and_val_and_plots(tmp_path):
    log = [{"loss": 2.0, "step": 5, "epoch": 0.5}, {"loss": 1.5, "step": 10, "epoch": 1.0}, {"eval_loss": 1.7, "step": 10, "epoch": 1.0}, {"train_runtime": 3.0}]
    history = loss_history(log)
    assert history == {"train": [{"step": 5, "epoch": 0.5, "loss": 2.0}, {"step": 10, "epoch": 1.0, "loss": 1.5}], "val": [{"step": 10, "epoch": 1.0, "loss": 1.7}]}
    png = plot_loss_curve(history, tmp_path / "loss.png", "test")
    assert png.read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_trainer_settings_follow_the_config(tmp_path):
    train = load_config("mistral-7b").finetune.generator
    lora = lora_config(train)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (16, 32, 0.05, {"q_proj", "k_proj", "v_proj", "o_proj"})
    args = sft_config(train, work_dir=tmp_path, seed=3)
    assert (args.num_train_epochs, args.learning_rate, args.max_length, args.seed) == (3.0, 1e-4, 1024, 3)
    assert args.completion_only_loss is True and args.eval_strategy == "epoch" and args.save_strategy == "epoch"
    assert args.activation_checkpointing is False and args.disable_tqdm is False
