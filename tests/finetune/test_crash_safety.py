"""Crash safety of fine-tuning: `python -m finetune.generator` killed with SIGKILL at any point
never leaves a half adapter where a later run (or the engine) would take it for complete, and the
same command run again resumes from the last complete checkpoint and ends with an adapter that loads.

Each test runs the real command in a subprocess on the session's micro LM (tests/conftest.py
`tiny_lm_dir`): 8 training examples in batches of 4, so 2 optimizer steps per epoch and a
checkpoint (finetune/common.py: `save_strategy="epoch"`) every 2 steps. Where the kill lands is made
certain either by polling the checkpoint folder from outside, or by a hook that makes the process
SIGKILL itself at a chosen point (inside the final save; inside a checkpoint save).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 2

# The process kills itself in the middle of the final save: the adapter and tokenizer are already in
# the temporary folder, the loss curve, report and config are not, and the rename has not happened.
KILL_IN_FINAL_SAVE = """
import os, signal, sys
import finetune.common as common
def killed_mid_save(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
common.plot_loss_curve = killed_mid_save
from finetune.generator import main
raise SystemExit(main(sys.argv[1:]))
"""

# The process kills itself while the Trainer writes its second checkpoint: model and optimizer are
# written, trainer_state.json (written last) is not, and the first checkpoint is not rotated away yet.
KILL_IN_SECOND_CHECKPOINT = """
import os, signal, sys
import transformers
original = transformers.Trainer._save_rng_state
saves = []
def killed_mid_checkpoint(self, output_dir):
    saves.append(output_dir)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_rng_state = killed_mid_checkpoint
from finetune.generator import main
raise SystemExit(main(sys.argv[1:]))
"""


def generator_args(tiny_lm_dir, data_dir, run_dir, epochs):
    return [
        "--mode", "plain", "--config", "tiny",
        "--set", f"run_dir={run_dir}",
        "--set", f"data.dir={data_dir}",
        "--set", f"generator.model={tiny_lm_dir}",
        "--set", "generator.device=cpu",
        "--set", "generator.cpu_threads=1",  # the machine is shared; one thread is fastest for the micro LM
        "--set", f"finetune.generator.epochs={epochs}",
        "--set", "finetune.generator.batch_size=4",
        "--set", "finetune.generator.limit=8",
        "--set", "finetune.generator.max_seq_length=256",
        "--set", "finetune.generator.learning_rate=0.01",
    ]  # fmt: skip


def launch(args, log_dir: Path, name: str, hook: str | None = None) -> subprocess.Popen:
    """Start the command with its output in files (a full pipe would block the child)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", hook, *args] if hook else [sys.executable, "-m", "finetune.generator", *args]
    out = open(log_dir / f"{name}.out", "w")
    err = open(log_dir / f"{name}.err", "w")
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def finish(proc: subprocess.Popen, log_dir: Path, name: str, timeout: float = 240) -> tuple[int, str, str]:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code, (log_dir / f"{name}.out").read_text(), (log_dir / f"{name}.err").read_text()


def complete_checkpoints(work: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*") if (p / "trainer_state.json").is_file())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def paths(run_dir: Path):
    output = run_dir / "adapters" / "generator"
    return output, output.parent / ".generator.checkpoints"


def assert_complete_adapter_that_loads(output: Path, tiny_lm_dir, run_dir, total_steps: int, resumed_from: int):
    from pipeline.config import load_config
    from pipeline.models import load_llm

    names = {p.name for p in output.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "loss_history.json", "loss_curve.png", "train_report.json", "ragft_config.yaml"} <= names
    report = json.loads((output / "train_report.json").read_text())
    assert report["steps"] == total_steps and report["resumed_from_step"] == resumed_from
    # the history continued across the kill: one train point per logged step, once, in order, and
    # one validation point per epoch (restored from the checkpoint, then extended)
    history = json.loads((output / "loss_history.json").read_text())
    steps = [p["step"] for p in history["train"]]
    assert steps == sorted(set(steps)) and steps[0] == 1
    assert [round(p["epoch"]) for p in history["val"]] == list(range(1, total_steps // STEPS_PER_EPOCH + 1))
    config = load_config("tiny", [f"run_dir={run_dir}", f"generator.model={tiny_lm_dir}", "generator.device=cpu", "generator.max_new_tokens=4"])
    llm = load_llm(config, adapter=str(output), verbose=False)
    (answer,) = llm.generate_batch(["Question: What is a binary heap?\nAnswer:"], show_progress=False)
    assert isinstance(answer, str)
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".")) == []  # no checkpoint or temporary folder left


def test_sigkill_mid_training_keeps_the_previous_adapter_and_the_rerun_resumes(tiny_lm_dir, small_data_dir, tmp_path, adapter_maker):
    run_dir = tmp_path / "run"
    output, work = paths(run_dir)
    adapter_maker(tiny_lm_dir, output)  # what an earlier complete run left: must survive the kill
    previous = snapshot(output)
    epochs = 40  # 80 steps, ~3 s of training: the kill lands well before the end
    args = generator_args(tiny_lm_dir, small_data_dir, run_dir, epochs)

    proc = launch(args, tmp_path, "killed")
    deadline = time.monotonic() + 240
    while not complete_checkpoints(work):
        assert proc.poll() is None, (tmp_path / "killed.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    code, _, _ = finish(proc, tmp_path, "killed")
    assert code == -signal.SIGKILL  # killed, not finished

    assert snapshot(output) == previous  # no new adapter, not even part of one, at the final name
    seen = complete_checkpoints(work)
    assert seen and seen[-1] < epochs * STEPS_PER_EPOCH  # killed mid-training

    code, out, err = finish(launch(args, tmp_path, "rerun"), tmp_path, "rerun")
    assert code == 0, err[-3000:]
    resumed = re.search(r"resuming\s+from (\S*checkpoint-(\d+))", out)
    assert resumed, out
    assert int(resumed[2]) >= seen[-1] and int(resumed[2]) % STEPS_PER_EPOCH == 0
    assert snapshot(output) != previous
    assert_complete_adapter_that_loads(output, tiny_lm_dir, run_dir, epochs * STEPS_PER_EPOCH, int(resumed[2]))


def test_sigkill_during_the_final_save_never_exposes_a_half_adapter(tiny_lm_dir, small_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    output, work = paths(run_dir)
    epochs = 3
    args = generator_args(tiny_lm_dir, small_data_dir, run_dir, epochs)

    code, _, err = finish(launch(args, tmp_path, "killed", hook=KILL_IN_FINAL_SAVE), tmp_path, "killed")
    assert code == -signal.SIGKILL, err[-3000:]
    assert not output.exists()  # the half-written adapter never got the final name ...
    (half,) = output.parent.glob(".generator.*.tmp")  # ... it is in the hidden temporary folder
    assert (half / "adapter_model.safetensors").is_file() and not (half / "train_report.json").exists()
    assert complete_checkpoints(work) == [epochs * STEPS_PER_EPOCH]  # training itself had finished

    # the engine would refuse the missing adapter rather than load the half one
    from pipeline.config import load_config
    from pipeline.engine import ArtifactMissingError, Components

    config = load_config("tiny", [f"run_dir={run_dir}", f"generator.model={tiny_lm_dir}"])
    with pytest.raises(ArtifactMissingError, match="python -m finetune.generator --mode plain"):
        Components(config).adapter_path("plain")

    code, out, err = finish(launch(args, tmp_path, "rerun"), tmp_path, "rerun")
    assert code == 0, err[-3000:]
    assert f"resuming        from {work / f'checkpoint-{epochs * STEPS_PER_EPOCH}'}" in out
    assert not half.exists()  # the leftover of the killed save is cleaned up
    assert_complete_adapter_that_loads(output, tiny_lm_dir, run_dir, epochs * STEPS_PER_EPOCH, epochs * STEPS_PER_EPOCH)


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_save_resumes_from_the_previous_complete_one(tiny_lm_dir, small_data_dir, tmp_path):
    """A checkpoint cut short (no trainer_state.json) is newer than the complete one: resuming from
    it would fail on every re-run, so the re-run takes the previous complete checkpoint."""
    run_dir = tmp_path / "run"
    output, work = paths(run_dir)
    epochs = 3
    args = generator_args(tiny_lm_dir, small_data_dir, run_dir, epochs)

    code, _, err = finish(launch(args, tmp_path, "killed", hook=KILL_IN_SECOND_CHECKPOINT), tmp_path, "killed")
    assert code == -signal.SIGKILL, err[-3000:]
    assert not output.exists()
    partial = work / f"checkpoint-{2 * STEPS_PER_EPOCH}"
    assert partial.is_dir() and not (partial / "trainer_state.json").exists()
    assert complete_checkpoints(work) == [STEPS_PER_EPOCH]

    code, out, err = finish(launch(args, tmp_path, "rerun"), tmp_path, "rerun")
    assert code == 0, err[-3000:]
    assert f"resuming        from {work / f'checkpoint-{STEPS_PER_EPOCH}'}" in out
    assert_complete_adapter_that_loads(output, tiny_lm_dir, run_dir, epochs * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
