"""Rewriter LoRA fine-tuning and its retrieval report (finetune/rewriter.py), on micro models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from finetune.rewriter import evaluate_rewriters, main, recommend_mode, rewriter_rows, train_rewriter
from helpers import micro_lm_config
from pipeline.config import read_resolved_config
from rewrite.prompts import HYDE_SYSTEM


def _config(tiny_lm_dir, small_data_dir, run_dir, *extra):
    return micro_lm_config(
        tiny_lm_dir,
        small_data_dir,
        run_dir,
        "rewrite.max_new_tokens=6",
        "finetune.rewriter.epochs=1",
        "finetune.rewriter.batch_size=8",
        "finetune.rewriter.learning_rate=0.01",
        "eval.bootstrap_samples=50",
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tiny_lm_dir, small_data_dir, tmp_path_factory):
    config = _config(tiny_lm_dir, small_data_dir, tmp_path_factory.mktemp("rewriter-run"))
    lines = []
    report = train_rewriter(config, log=lines.append, show_progress=False)
    return config, report, lines


def test_rows_are_question_to_own_answer_under_the_hyde_prompt(tiny_lm_dir, small_data_dir, tmp_path):
    from transformers import AutoTokenizer

    config = _config(tiny_lm_dir, small_data_dir, tmp_path)
    train, val = rewriter_rows(config, AutoTokenizer.from_pretrained(tiny_lm_dir))
    assert (len(train), len(val)) == (40, 10)
    first = json.loads((small_data_dir / "train.jsonl").read_text().splitlines()[0])
    assert train[0]["prompt"].startswith(HYDE_SYSTEM) and f"Question: {first['question']}" in train[0]["prompt"]
    assert train[0]["completion"] == " " + first["answer"]


def test_training_writes_a_complete_adapter_where_rewrite_adapter_looks(trained):
    config, report, lines = trained
    out = config.finetune.rewriter.output
    assert out == config.rewrite.adapter  # what the engine loads is what training wrote
    for name in ("adapter_config.json", "adapter_model.safetensors", "loss_history.json", "loss_curve.png", "train_report.json", "ragft_config.yaml"):
        assert Path(out, name).is_file(), name
    weights = load_file(f"{out}/adapter_model.safetensors")
    assert weights and any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at zero
    assert report["kind"] == "rewriter-adapter" and report["train_examples"] == 40 and len(report["val_loss"]) == 1
    assert read_resolved_config(out)[1]["kind"] == "rewriter-adapter"
    assert any(line.startswith("trained ") for line in lines)


def test_retrieval_report_compares_none_base_and_lora(trained):
    config, _, _ = trained
    logged = []
    # a second adapter name for the same folder: hyde-judged runs like any adapter variant; ft-dense has no embedder here
    adapters = {"hyde-lora": config.finetune.rewriter.output, "hyde-judged": config.finetune.rewriter.output}
    result = evaluate_rewriters(config, retrievers=("dense", "hybrid", "ft-dense"), adapters=adapters, show_progress=False, log=logged.append)
    assert set(result["results"]) == {f"{v}/{r}" for v in ("none", "hyde-base", "hyde-lora", "hyde-judged") for r in ("dense", "hybrid")}
    assert any("ft- retrievers skipped" in line and "finetune.embedder" in line for line in logged)
    assert result["results"]["hyde-judged/dense"] == result["results"]["hyde-lora/dense"]  # the same adapter: the same rewrites
    assert result["adapters"] == {"hyde-base": None, "hyde-lora": config.finetune.rewriter.output, "hyde-judged": config.finetune.rewriter.output}
    for row in result["results"].values():
        assert 0.0 <= row["recall@1"] <= row["recall@5"] <= 1.0 and row["n"] == 10
        assert row["ci95"]["mrr@10"][0] <= row["mrr@10"] <= row["ci95"]["mrr@10"][1]
    assert set(result["paired_vs_none"]) == {f"{v}/{r}" for v in ("hyde-base", "hyde-lora", "hyde-judged") for r in ("dense", "hybrid")}
    assert result["rewrites"]["hyde-lora"][0]["question"]
    with pytest.raises(ValueError, match="--adapter NAME=DIR"):
        evaluate_rewriters(config, variants=("none", "hyde-other"), show_progress=False, log=lambda *_: None)


def test_question_weights_search_one_generation_of_rewrites_at_each_weight(trained):
    """--question-weights: VARIANT@w rows from one generation of the rewrites; w = 1 searches with
    the question alone (the none row's rankings), `mean` is the plain HyDE mean (the default row)."""
    config, _, _ = trained
    plain = evaluate_rewriters(config, variants=("none", "hyde-lora"), retrievers=("dense",), show_progress=False, log=lambda *_: None)
    result = evaluate_rewriters(config, variants=("none", "hyde-lora"), retrievers=("dense",), question_weights=[None, 1.0, 0.5], show_progress=False, log=lambda *_: None)
    assert set(result["results"]) == {"none/dense", "hyde-lora@mean/dense", "hyde-lora@1/dense", "hyde-lora@0.5/dense"}
    assert result["results"]["hyde-lora@1/dense"] == result["results"]["none/dense"]
    assert result["paired_vs_none"]["hyde-lora@1/dense"]["diff"] == 0.0
    assert result["results"]["hyde-lora@mean/dense"] == plain["results"]["hyde-lora/dense"]
    assert result["question_weights"] == [None, 1.0, 0.5] and "question_weights" not in plain
    assert recommend_mode({"paired_vs_none": {"hyde-lora@0.9/ft-dense": {"diff": 0.01, "ci95_low": 0.001, "ci95_high": 0.02}}}, "ft-dense") == ("hyde", "hyde-lora@0.9")
    with pytest.raises(ValueError, match=r"question_weights \[2.0\] must be between 0 and 1"):
        evaluate_rewriters(config, variants=("none",), question_weights=[2.0], show_progress=False, log=lambda *_: None)


def test_parse_question_weights_names_the_bad_item():
    from finetune.rewriter import parse_question_weights
    from pipeline.config import ConfigError

    assert parse_question_weights("0.5, 0.9,mean") == [0.5, 0.9, None] and parse_question_weights(None) is None
    for bad in ("0.5,1.5", "0.5,heavy"):
        with pytest.raises(ConfigError, match=r"--question-weights: '(1.5|heavy)' is not a weight between 0 and 1"):
            parse_question_weights(bad)


def test_recommend_mode_keeps_a_rewriter_only_when_its_gain_is_above_zero():
    test = lambda diff, low, high: {"diff": diff, "ci95_low": low, "ci95_high": high}  # noqa: E731
    result = {
        "paired_vs_none": {
            "hyde-lora/ft-dense": test(0.01, -0.01, 0.03),  # not earned: the interval holds 0
            "hyde-judged/ft-dense": test(0.02, 0.005, 0.04),
            "hyde-base/ft-dense": test(0.015, 0.001, 0.03),
            "hyde-lora/dense": test(0.2, 0.1, 0.3),  # another retriever: not what full searches
        }
    }
    assert recommend_mode(result, "ft-dense") == ("hyde", "hyde-judged")
    assert recommend_mode(result, "hybrid") == ("none", None) and recommend_mode({}, "dense") == ("none", None)
    del result["paired_vs_none"]["hyde-judged/ft-dense"], result["paired_vs_none"]["hyde-base/ft-dense"]
    assert recommend_mode(result, "ft-dense") == ("none", None)


def test_cli_reports_a_missing_base_model(tmp_path, capsys):
    assert main(["--set", f"run_dir={tmp_path}", "--set", f"generator.model={tmp_path}/no-model", "--no-evaluate"]) == 2
    assert "no-model" in capsys.readouterr().err
