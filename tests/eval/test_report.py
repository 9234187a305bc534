"""Markdown tables and PNG plots of eval.report."""

from __future__ import annotations

import pytest

from eval import report as R
from eval.metrics import latency_summary


def _row(bleu, rouge, bert=None, model=None, **extra):
    row = {"bleu4": bleu, "rougeL": rouge, "exact_match": 0.0, "token_f1": 0.2, "n": 10,
           "ci95": {"bleu4": [bleu - 0.01, bleu + 0.01], "rougeL": [rouge - 0.02, rouge + 0.02], "exact_match": [0.0, 0.0], "token_f1": [0.1, 0.3]},
           "model_for_bertscore": model}
    if bert is not None:
        row["bertscore_f1"] = bert
        row["ci95"]["bertscore_f1"] = [bert - 0.005, bert + 0.005]
    row.update(extra)
    return row


def test_table_cells_header_and_reference_rows():
    ours = {"rag_vanilla": _row(0.0515, 0.2266, 0.65, "m/x"), "full": _row(0.0800, 0.2500, 0.70, "m/x")}
    refs = {"vanilla": _row(0.0274, 0.1620, 0.60, "m/x")}
    table = R.render_table(ours, reference_rows=refs, reference_label="reference experiment",
                           bertscore_info={"layer": 6, "requested": "roberta-large", "fallback_reason": "it is not available offline"})
    lines = table.splitlines()
    assert lines[0].startswith("BERTScore model: `m/x` (layer 6, no baseline rescale); `roberta-large` was requested but it is not available offline.")
    assert "| system | BLEU-4 | ROUGE-L | BERTScore F1 | EM | token F1 | n |" in lines
    assert "| rag_vanilla | 0.0515 [0.0415, 0.0615] | 0.2266 [0.2066, 0.2466] | 0.6500 [0.6450, 0.6550] | 0.0000 [0.0000, 0.0000] | 0.2000 [0.1000, 0.3000] | 10 |" in lines
    assert lines[-1].startswith("| vanilla (reference experiment) | 0.0274 [")
    assert "R@5" not in table and "latency" not in table


def test_optional_columns_show_dash_for_systems_without_them():
    summary = latency_summary([{"retrieve": 0.1, "generate": 1.0}, {"retrieve": 0.1, "generate": 2.0}])
    ours = {
        "vanilla": _row(0.03, 0.16),
        "rag": _row(0.05, 0.22, retrieval={"recall@5": 0.8, "mrr@10": 0.6, "ci95": {"recall@5": [0.7, 0.9], "mrr@10": [0.5, 0.7]}}, latency=summary),
    }
    table = R.render_table(ours)
    assert table.splitlines()[0] == "BERTScore: not computed. Cells: value [95% bootstrap interval over questions]."
    assert "| system | BLEU-4 | ROUGE-L | EM | token F1 | R@5 | MRR@10 | p50 latency (s) | n |" in table
    assert "| 0.8000 [0.7000, 0.9000] | 0.6000 [0.5000, 0.7000] | 1.600 | 10 |" in table
    vanilla_line = next(line for line in table.splitlines() if line.startswith("| vanilla "))
    assert vanilla_line.endswith("| – | – | – | 10 |")
    without = R.render_table(ours, retrieval=False, latency=False)
    assert "R@5" not in without and "latency" not in without


def test_table_refuses_mixed_bertscore_models_and_bad_input():
    with pytest.raises(ValueError, match="different BERTScore models"):
        R.render_table({"a": _row(0.1, 0.2, 0.8, "m/one")}, reference_rows={"b": _row(0.1, 0.2, 0.8, "m/two")})
    with pytest.raises(ValueError, match="at least one"):
        R.render_table({})
    with pytest.raises(TypeError, match="metrics dict"):
        R.render_table({"a": 0.3})
    with pytest.raises(ValueError, match="unknown metric"):
        R.render_table({"a": _row(0.1, 0.2)}, metrics=["bleu"])


def test_paired_tests_table():
    text = R.render_paired_tests({"full": {"bleu4": {"diff": 0.02, "ci95_low": 0.01, "ci95_high": 0.03, "p_value": 0.002}}}, "rag_vanilla")
    assert "| system | Δ BLEU-4 |" in text
    assert "| full | +0.0200 [+0.0100, +0.0300] (p=0.002) |" in text
    assert "No paired tests" in R.render_paired_tests({}, "rag_vanilla")


def _png_shape(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_plot_metrics_png(tmp_path):
    ours = {"rag_vanilla": _row(0.05, 0.22, 0.65, "m/x"), "full": _row(0.08, 0.25, 0.70, "m/x")}
    out = R.plot_metrics(ours, tmp_path / "plots" / "metrics.png", reference_rows={"vanilla": _row(0.03, 0.16, 0.6, "m/x")})
    height, width, _ = _png_shape(out)
    assert width > 600 and height > 200
    assert [p.name for p in out.parent.iterdir()] == ["metrics.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match=".png"):
        R.plot_metrics(ours, tmp_path / "metrics.jpg")
    with pytest.raises(ValueError, match="no system has"):
        R.plot_metrics(ours, tmp_path / "m.png", metrics=["exact_match_squad"])


def test_plot_latency_png(tmp_path):
    latency = {
        "rag_vanilla": latency_summary([{"retrieve": 0.05, "generate": 1.2}, {"retrieve": 0.07, "generate": 0.9}]),
        "full": latency_summary([{"rewrite": 0.4, "retrieve": 0.1, "rerank": 0.2, "generate": 1.0}]),
    }
    out = R.plot_latency(latency, tmp_path / "latency.png", statistic="p50_s")
    height, width, _ = _png_shape(out)
    assert width > 400 and height > 100
    with pytest.raises(TypeError, match="latency_summary"):
        R.plot_latency({"x": {"p50_s": 1.0}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="statistic"):
        R.plot_latency(latency, tmp_path / "bad.png", statistic="max")
