"""The pointwise LM reranker: its training rows, a LoRA run on the tiny LM, and its scores
(rerank/lm_pointwise.py, finetune/lm_reranker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.lm_reranker import lm_reranker_rows, main, train_lm_reranker
from helpers import micro_lm_config
from rerank.lm_pointwise import RELEVANCE_ASK, LMPointwiseReranker, label_token_ids, pointwise_example


def _config(tiny_lm_dir, small_data_dir, run_dir, *extra):
    return micro_lm_config(
        tiny_lm_dir,
        small_data_dir,
        run_dir,
        "finetune.lm_reranker.hard_negatives=0",  # mining needs a persisted knowledge base: tested in finetune.reranker
        "finetune.lm_reranker.random_negatives=2",
        "finetune.lm_reranker.epochs=1",
        "finetune.lm_reranker.learning_rate=0.01",
        "generator.batch_size=4",
        "generator.max_passage_chars=80",  # the micro tokenizer spends ~1 token per 2 characters: rows stay within the micro LM's 256 positions
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tiny_lm_dir, small_data_dir, tmp_path_factory):
    config = _config(tiny_lm_dir, small_data_dir, tmp_path_factory.mktemp("lm-reranker-run"))
    report = train_lm_reranker(config, log=lambda *_: None, show_progress=False)
    return config, report


def test_rows_pair_each_question_with_its_answer_yes_and_other_answers_no(tiny_lm_dir, small_data_dir, tmp_path):
    from transformers import AutoTokenizer

    config = _config(tiny_lm_dir, small_data_dir, tmp_path)
    train, val = lm_reranker_rows(config, AutoTokenizer.from_pretrained(tiny_lm_dir), show_progress=False)
    assert len(train) == 40 * 3 and len(val) == 10 * 2  # own answer + 2 random (train), + 1 random (val)
    first = json.loads((small_data_dir / "train.jsonl").read_text().splitlines()[0])
    yes, *nos = train[:3]
    assert yes["completion"].strip() == "yes" and all(n["completion"].strip() == "no" for n in nos)
    assert f"Question: {first['question']}" in yes["prompt"] and first["answer"][:40].strip() in yes["prompt"] and RELEVANCE_ASK in yes["prompt"]
    assert all(first["answer"][:40] not in n["prompt"] for n in nos)
    assert [r["completion"].strip() for r in val[:2]] == ["yes", "no"]


def test_the_label_tokens_are_what_training_tokenized(tiny_lm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    yes, no = label_token_ids(tokenizer)
    row = pointwise_example("q?", "p.", True, tokenizer)
    assert tokenizer(row["prompt"] + row["completion"]).input_ids[len(tokenizer(row["prompt"]).input_ids)] == yes != no


def test_trained_adapter_scores_pairs_alike_alone_and_in_a_padded_batch(trained):
    """Batched prompts are padded on the left; with the positions counted from the first real token
    a pair scores the same alone as inside a batch of longer prompts."""
    config, report = trained
    out = Path(config.finetune.lm_reranker.output)
    assert (out / "adapter_config.json").is_file() and report["kind"] == "lm-reranker-adapter" and report["train_examples"] == 120
    scorer = LMPointwiseReranker(config, str(out), batch_size=4)
    question = "How do I read a file in Python?"
    passages = ["Use open() and read().", "A B-tree keeps keys sorted in balanced nodes with many children each, " * 3, "Lists are mutable sequences.", "x"]
    together = scorer.score_pairs(question, passages)
    alone = [float(scorer.score_pairs(question, [p])[0]) for p in passages]
    assert together.shape == (4,) and together.tolist() == pytest.approx(alone, abs=1e-3)
    assert len(set(round(x, 4) for x in alone)) > 1  # the passage changes the score
    assert scorer.score_pairs(question, []).shape == (0,)


def test_rerank_evaluate_loads_an_adapter_folder_as_the_lm_reranker(trained):
    from rerank.evaluate import load_scorer

    config, _ = trained
    assert isinstance(load_scorer(config, config.finetune.lm_reranker.output), LMPointwiseReranker)


def test_cli_reports_a_missing_base_model(tmp_path, capsys):
    assert main(["--set", f"run_dir={tmp_path}", "--set", f"generator.model={tmp_path}/no-model"]) == 2
    assert "no-model" in capsys.readouterr().err
