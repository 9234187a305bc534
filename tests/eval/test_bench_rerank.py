"""eval.bench_rerank: timing logic, report, ONNX availability message (tiny random cross-encoder)."""

from __future__ import annotations

import json

import pytest

from eval.bench_rerank import main, onnx_available, percentile, run_benchmark, to_markdown
from pipeline.config import load_config


def test_percentile_nearest_rank():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0 and percentile(values, 95) == 5.0 and percentile(values, 0) == 1.0
    assert percentile([7.0], 95) == 7.0


def test_benchmark_reports_throughput_and_latency(tiny_cross_encoder_dir, demo_dir):
    config = load_config("tiny", [f"rerank.model={tiny_cross_encoder_dir}", f"data.dir={demo_dir}"])
    result = run_benchmark(config, sizes=(4, 9), queries=3, onnx=False, show_progress=False, log=lambda *_: None)
    assert result["model"].startswith("rerank.model")
    for key, size in (("top4", 4), ("top9", 9)):
        row = result["torch"][key]
        assert row["queries"] == 3 and row["pairs"] == 3 * size
        assert row["pairs_per_s"] > 0 and 0 < row["latency_ms_p50"] <= row["latency_ms_p95"]
    assert result["onnx_backend"] == {"available": False, "reason": "skipped (--no-onnx)"}
    table = to_markdown(result)
    assert "| torch | 4 |" in table and "| torch | 9 |" in table and "ONNX backend: not measured" in table


def test_onnx_availability_is_explained():
    available, reason = onnx_available()
    assert isinstance(available, bool)
    assert available or reason  # when it cannot run, the report says why


def test_cli_json_and_bad_sizes(tiny_cross_encoder_dir, demo_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--set", f"rerank.model={tiny_cross_encoder_dir}", "--set", f"data.dir={demo_dir}", "--sizes", "3", "--queries", "2", "--no-onnx", "--format", "json", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["torch"]["top3"]["pairs"] == 6 and json.loads(out.read_text()) == printed
    assert main(["--sizes", "0,x"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--sizes", "--queries", "--no-onnx", "--format", "--out", "--no-progress"):
        assert flag in out
