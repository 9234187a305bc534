"""Shared trainer setup (finetune/common.py): atomic artifact folders, resume, loss history."""

from __future__ import annotations

import dataclasses

import pytest

from finetune.common import last_checkpoint, lora_config, loss_history, plot_loss_curve, sft_config
from pipeline.fileio import atomic_directory
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


def test_save_steps_adds_checkpoints_between_epochs(tmp_path):
    train = load_config("smollm2").finetune.generator
    args = sft_config(train, work_dir=tmp_path, seed=1)
    assert (args.save_strategy, args.save_steps, args.eval_strategy) == ("steps", train.save_steps, "epoch")
    assert sft_config(dataclasses.replace(train, save_steps=None), work_dir=tmp_path, seed=1).save_strategy == "epoch"


def test_top_layers_puts_lora_on_the_last_layers_only():
    train = load_config("smollm2").finetune.generator
    assert train.top_layers == 12
    assert lora_config(train, 30).layers_to_transform == list(range(18, 30))
    assert lora_config(dataclasses.replace(train, top_layers=None), 30).layers_to_transform is None


def test_scoring_only_completion_positions_gives_the_same_loss_and_gradients(tiny_lm_dir):
    """The compact fused LM head (finetune.common.score_completion_tokens_only) is a speed-up only."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from finetune.common import score_completion_tokens_only

    torch.manual_seed(0)
    ids = torch.randint(5, 200, (2, 24))
    labels = ids.clone()
    labels[:, :17] = -100  # a prompt of 17 tokens, a completion of 7

    def loss_and_grad():
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        trl_utils.add_fused_lm_head(model)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), model.get_output_embeddings().weight.grad.clone()

    patched = trl_utils._use_triton
    try:
        trl_utils._use_triton = getattr(patched, "_original", patched)
        full_loss, full_grad = loss_and_grad()
        assert score_completion_tokens_only()
        compact_loss, compact_grad = loss_and_grad()
    finally:
        trl_utils._use_triton = patched
    assert torch.allclose(full_loss, compact_loss, atol=1e-5)
    assert torch.allclose(full_grad, compact_grad, atol=1e-5)
