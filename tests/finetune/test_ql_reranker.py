"""The query-likelihood reranker: its training rows, a LoRA run on the tiny LM, and its scores
against a plain forward pass (rerank/query_likelihood.py, finetune/ql_reranker.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from finetune.ql_reranker import main, ql_rows, train_ql_reranker
from pipeline.config import ConfigError
from helpers import micro_lm_config
from rerank.query_likelihood import QL_ADAPTER_KIND, QueryLikelihoodReranker, is_ql_adapter, ql_example


def _config(tiny_lm_dir, small_data_dir, run_dir, *extra):
    return micro_lm_config(
        tiny_lm_dir,
        small_data_dir,
        run_dir,
        "finetune.ql_reranker.epochs=1",
        "finetune.ql_reranker.learning_rate=0.01",
        "finetune.ql_reranker.batch_size=4",
        "rerank.kind=query-likelihood",
        "rerank.model='{run_dir}/adapters/ql-reranker'",
        "rerank.batch_size=3",
        "rerank.max_length=200",  # within the micro LM's 256 positions
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tiny_lm_dir, small_data_dir, tmp_path_factory):
    config = _config(tiny_lm_dir, small_data_dir, tmp_path_factory.mktemp("ql-reranker-run"))
    report = train_ql_reranker(config, log=lambda *_: None, show_progress=False)
    return config, report


def test_rows_write_each_question_from_its_own_answer_and_skip_empty_records(tiny_lm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    records = [{"question": "What is a B-tree?", "answer": "A balanced search tree."}, {"question": " ", "answer": "orphan"}, {"question": "Why?", "answer": ""}]
    rows = ql_rows(records, tokenizer)
    assert len(rows) == 1
    assert "A balanced search tree." in rows[0]["prompt"] and "What is a B-tree?" not in rows[0]["prompt"]
    assert rows[0]["completion"].strip() == "What is a B-tree?"
    assert rows[0] == ql_example("What is a B-tree?", "A balanced search tree.", tokenizer)  # scoring builds the same text


def test_scores_are_the_mean_log_probability_of_the_question_alone_or_in_a_padded_batch(trained):
    """Batches are right-padded and sorted by length; each pair's score equals the mean
    log-probability of its question's tokens (and the end token) from a forward pass of that
    pair alone, computed here without the reranker's code."""
    import torch

    config, report = trained
    out = Path(config.rerank.model)
    assert report["kind"] == QL_ADAPTER_KIND and report["train_examples"] == 40 and is_ql_adapter(str(out))
    reranker = QueryLikelihoodReranker.from_config(config, cache_size=0)
    question = "How do I read a file in Python?"
    passages = ["Use open() and read().", "A B-tree keeps keys sorted in balanced nodes with many children each. " * 2, "Lists are mutable.", "x"]
    together = reranker.score_pairs(question, passages)
    model, tokenizer = reranker.load(), reranker._tokenizer
    expected = []
    for passage in passages:
        row = ql_example(question, passage, tokenizer)
        start = len(tokenizer(row["prompt"]).input_ids)
        ids = tokenizer(row["prompt"] + row["completion"]).input_ids + [tokenizer.eos_token_id]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        expected.append(sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids))) / (len(ids) - start))
    assert together.shape == (4,) and together.tolist() == pytest.approx(expected, abs=2e-3)
    assert all(x < 0 for x in together) and len({round(x, 3) for x in together}) > 1  # the passage changes the score
    assert reranker.score_pairs(question, []).shape == (0,)


def test_the_postprocessor_orders_by_the_interpolation_and_grades_with_the_geometric_mean_probability(trained):
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank import build_reranker

    config, _ = trained
    reranker = build_reranker(config, retrieval_weight=0.0, top_n=2)
    assert isinstance(reranker, QueryLikelihoodReranker)
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=text), score=score) for i, (text, score) in enumerate([("Use open().", 0.9), ("Lists are mutable.", 0.5), ("x", 0.1)])]
    logits = reranker.score_pairs("How do I read a file?", [n.node.text for n in nodes])
    top = reranker.postprocess_nodes(nodes, query_str="How do I read a file?")
    best_first = sorted(range(3), key=lambda i: -logits[i])
    assert [n.node.node_id for n in top] == [f"n{i}" for i in best_first[:2]]
    for n in top:
        assert n.score == pytest.approx(math.exp(n.node.metadata["rerank_logit"])) and 0 < n.score <= 1
    assert nodes[0].node.metadata == {}  # the caller's nodes are untouched


def test_rerank_evaluate_loads_a_query_likelihood_adapter_by_its_report(trained, tmp_path):
    from rerank.evaluate import load_scorer

    config, _ = trained
    assert isinstance(load_scorer(config, config.rerank.model), QueryLikelihoodReranker)
    assert not is_ql_adapter(str(tmp_path))  # no report: not one
    (tmp_path / "adapter_config.json").write_text("{}")  # an adapter finetune.ql_reranker did not train
    with pytest.raises(ConfigError, match=r"--reranker .*finetune\.ql_reranker did not train.*Fix:"):
        load_scorer(config, str(tmp_path))


def test_cli_reports_a_missing_base_model(tmp_path, capsys):
    assert main(["--set", f"run_dir={tmp_path}", "--set", f"generator.model={tmp_path}/no-model"]) == 2
    assert "no-model" in capsys.readouterr().err
