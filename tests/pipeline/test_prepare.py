"""`python -m pipeline.prepare`: stages, outputs, CLI, and the reference reproduction."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.config import load_config, read_resolved_config
from pipeline.prepare import build_parser, main, prepare


def hashing_embed(texts):
    """Deterministic stand-in for the embedder where the model is irrelevant to the logic."""
    vectors = []
    for text in texts:
        key = text.strip().lower().rstrip("?").replace("what's", "what is")
        rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
        vector = rng.normal(size=16)
        vectors.append(vector / np.linalg.norm(vector))
    return np.array(vectors)


def write_raw(path, questions):
    path.write_text("".join(json.dumps({"question": q, "answer": f"answer to {q}"}) + "\n" for q in questions), encoding="utf-8")
    return path


def test_prepare_runs_every_stage_and_writes_outputs(tmp_path):
    questions = [f"Question number {i}?" for i in range(40)] + ["question number 3?", "What is a heap?", "What's a heap"]
    raw = write_raw(tmp_path / "raw.jsonl", questions)
    config = load_config("tiny", [f"data.input={raw}", f"data.dir={tmp_path / 'out'}"])
    lines = []
    report = prepare(config, embed=hashing_embed, log=lines.append)
    assert report["counts"] == {"raw": 43, "invalid_skipped": 0, "valid": 43, "exact_dedup": 42, "semantic_dedup": 41, "train": 28, "val": 6, "test": 7}
    out = tmp_path / "out"
    written = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    assert sum(len(v) for v in written.values()) == 41
    assert json.loads((out / "prepare.json").read_text())["counts"] == report["counts"]
    resolved, extra = read_resolved_config(out)
    assert resolved.data.input == str(raw) and extra["kind"] == "prepared-data"
    assert any(line.startswith("counts: 43 -> 42 -> 41") for line in lines)
    assert not list(out.glob("*.tmp"))


def test_threshold_one_disables_semantic_stage_without_loading_a_model(tmp_path):
    raw = write_raw(tmp_path / "raw.jsonl", ["A?", "B?", "a?"])
    config = load_config("tiny", [f"data.input={raw}", f"data.dir={tmp_path}", "data.dedup_threshold=1.0"])

    def must_not_embed(texts):
        raise AssertionError("embedding must be skipped at threshold 1.0")

    assert prepare(config, embed=must_not_embed, log=lambda _: None)["counts"]["semantic_dedup"] == 2


def test_skip_invalid_is_reported_in_prepare_json(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"question": "A?", "answer": "x"}\nnot json\n{"question": "B?", "answer": ""}\n{"question": "C?", "answer": "y"}\n', encoding="utf-8")
    config = load_config("tiny", [f"data.input={raw}", f"data.dir={tmp_path / 'o'}", "data.skip_invalid=true", "data.dedup_threshold=1.0"])
    report = prepare(config, log=lambda _: None)
    assert report["counts"]["invalid_skipped"] == 2 and report["counts"]["valid"] == 2
    assert [row["line"] for row in report["skipped_rows"]] == [2, 3]


def test_cli_error_names_line_and_leaves_no_output(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"question": "A?", "answer": "x"}\n{"question": 5, "answer": "y"}\n', encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--input", str(raw), "--out", str(out), "--threshold", "1.0"]) == 2
    err = capsys.readouterr().err
    assert f"{raw}:2: field 'question' must be a string" in err and "--skip-invalid" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--ratios", "0.7,0.3"], "three non-negative fractions summing to 1"),
        (["--ratios", "a,b,c"], "--ratios 'a,b,c' must be three comma-separated numbers"),
        (["--threshold", "0"], "data.dedup_threshold must be in (0, 1]"),
        (["--set", "data.sed=1"], "unknown key 'data.sed'"),
    ],
)
def test_cli_rejects_bad_flags(tmp_path, capsys, flags, fragment):
    raw = write_raw(tmp_path / "raw.jsonl", ["A?"])
    assert main(["--input", str(raw), "--out", str(tmp_path / "o"), *flags]) == 2
    assert fragment in capsys.readouterr().err


def test_help_explains_every_flag():
    text = build_parser().format_help()
    for flag in ("--input", "--out", "--threshold", "--seed", "--ratios", "--skip-invalid", "--model", "--config", "--set", "--help-config"):
        assert flag in text
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"


def test_help_runs_as_a_module_without_loading_models():
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--skip-invalid" in result.stdout
    assert "torch" not in result.stderr.lower()


@pytest.mark.realweights
def test_reproduces_the_reference_experiment_exactly(seed_dir, tmp_path):
    """2070 -> 2019 -> 1806 -> 1264 / 270 / 272, and the very rows of the reference splits, in order."""
    out = tmp_path / "seed"
    config = load_config("tiny", [f"data.input={seed_dir / 'dataset.jsonl'}", f"data.dir={out}"])
    lines = []
    report = prepare(config, log=lines.append)
    counts = report["counts"]
    assert (counts["valid"], counts["exact_dedup"], counts["semantic_dedup"]) == (2070, 2019, 1806)
    assert (counts["train"], counts["val"], counts["test"]) == (1264, 270, 272)
    assert any("2070 -> 2019 -> 1806" in line for line in lines)
    for split in ("train", "val", "test"):
        ours = [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        reference = [json.loads(line) for line in (seed_dir / "splits" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert ours == reference, f"{split} differs from the reference split"
