"""finetune.reranker: hard-negative mining, example building, a short real training run, CLI errors."""

from __future__ import annotations

import random

import pytest

from finetune.reranker import (
    Example,
    bce_rows,
    build_examples,
    listwise_rows,
    main,
    mine_hard_negatives,
    random_negatives,
)
from pipeline.config import load_config
from pipeline.data import load_split


@pytest.fixture(scope="module")
def demo_train(demo_dir):
    return load_split(demo_dir, "train")


@pytest.fixture(scope="module")
def hybrid_over_demo(demo_dir, demo_train, hash_embedding_cls, tmp_path_factory):
    """The project's hybrid retriever over an in-memory knowledge base of the demo train pairs
    (nodes exactly as ingestion makes them), plus a duplicate-answer pair to make mining harder."""
    from pipeline.index import KnowledgeBase, qa_nodes
    from pipeline.retrieve import build_retriever

    records = list(demo_train)
    # a second question with the same answer as the first: its node is no negative for either
    records.append({"question": "Rephrased: " + records[0]["question"], "answer": records[0]["answer"]})
    config = load_config("tiny", [f"run_dir={tmp_path_factory.mktemp('kb')}"])
    kb = KnowledgeBase.from_nodes(config, qa_nodes(records, split="train"), embed_model=hash_embedding_cls())
    yield build_retriever(config, mode="hybrid", top_k=8, kb=kb), records
    kb.close()


def test_mining_never_returns_the_positive(hybrid_over_demo):
    retriever, records = hybrid_over_demo
    mined = mine_hard_negatives(retriever, records, 3, show_progress=False)
    assert len(mined) == len(records)
    assert sum(len(m) for m in mined) >= 2.5 * len(records)  # the retriever did find negatives
    for record, negatives in zip(records, mined):
        assert len(negatives) <= 3
        assert record["answer"] not in negatives
        assert all(n.strip().lower() != record["answer"].strip().lower() for n in negatives)
        assert len(set(negatives)) == len(negatives)
    # the duplicate-answer pair: each one's own node ranks first and the twin's node is the same answer
    assert records[0]["answer"] not in mined[-1] and records[0]["answer"] not in mined[0]


def test_mining_keeps_the_retrievers_order_hardest_first(hybrid_over_demo):
    retriever, records = hybrid_over_demo
    record = records[5]
    hits = [h.node.metadata["answer"] for h in retriever.retrieve(record["question"]) if h.node.metadata["answer"] != record["answer"]]
    assert mine_hard_negatives(retriever, [record], 2, show_progress=False) == [hits[:2]]
    assert mine_hard_negatives(retriever, [record], 0, show_progress=False) == [[]]


def test_random_negatives_exclude_own_answer_and_given_passages(demo_train):
    rng = random.Random(0)
    records = demo_train[:30]
    for i in range(len(records)):
        picked = random_negatives(records, i, 3, rng, exclude=[records[(i + 1) % 30]["answer"]])
        assert len(picked) == 3 and len(set(picked)) == 3
        assert records[i]["answer"] not in picked and records[(i + 1) % 30]["answer"] not in picked
    assert random_negatives(records[:1], 0, 2, rng) == []  # nothing else to pick from


def test_examples_to_bce_and_listwise_rows(demo_train):
    records = demo_train[:6]
    hard = [[records[(i + 1) % 6]["answer"]] for i in range(6)]
    examples = build_examples(records, hard, 2, seed=1)
    assert all(len(e.hard) == 1 and len(e.random) == 2 and e.positive == r["answer"] for e, r in zip(examples, records))
    rows = bce_rows(examples)
    assert len(rows["label"]) == 6 * 4 and sum(rows["label"]) == 6
    assert rows["passage"][0] == records[0]["answer"] and rows["label"][:4] == [1.0, 0.0, 0.0, 0.0]
    columns = listwise_rows(examples, 3, records, seed=1)  # 1 mined + 2 filled at random
    assert set(columns) == {"query", "positive", "negative_1", "negative_2", "negative_3"}
    assert all(len(v) == 6 for v in columns.values())
    for i in range(6):
        negatives = [columns[f"negative_{j}"][i] for j in (1, 2, 3)]
        assert negatives[0] == hard[i][0] and columns["positive"][i] not in negatives and len(set(negatives)) == 3
    with pytest.raises(ValueError, match="pair up"):
        build_examples(records, hard[:2], 1, seed=1)


def test_missing_knowledge_base_is_a_clear_error(tmp_path, capsys, demo_dir):
    code = main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={demo_dir}", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "knowledge base" in err and "python -m pipeline.index --config tiny" in err and str(tmp_path) in err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={tmp_path / 'nodata'}", "--no-progress"])
    assert code == 2
    assert "python -m pipeline.prepare" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--help-config", "--epochs", "--output", "--no-progress"):
        assert flag in out


@pytest.mark.realweights
def test_short_real_training_changes_weights_and_does_not_hurt_val_mrr(demo_dir, tmp_path):
    """MiniLM + a fresh one-logit head, trained on 16 questions (3 pairs each) for 2 epochs: the
    weights must move and val MRR over 6 candidates must be at least the untrained head's."""
    import torch

    from finetune.common import seed_everything
    from finetune.reranker import CandidateSet, cross_encoder_scorer, new_cross_encoder, ranking_metrics, rerank_order, train_cross_encoder

    train = load_split(demo_dir, "train")[:16]
    val = load_split(demo_dir, "val")[:10]
    config = load_config("tiny", [f"run_dir={tmp_path}", "finetune.reranker.epochs=2", "finetune.reranker.learning_rate=5.0e-5", "finetune.reranker.batch_size=16", "finetune.reranker.max_length=64"])
    rng = random.Random(3)
    examples = [Example(r["question"], r["answer"], [], random_negatives(train, i, 2, rng)) for i, r in enumerate(train)]
    pool = [r["answer"] for r in load_split(demo_dir, "test")]
    passages = [[r["answer"], *pool[3 * i : 3 * i + 5]] for i, r in enumerate(val)]
    ids = [[f"c{j}" for j in range(6)] for _ in val]
    candidates = CandidateSet([r["question"] for r in val], ids, passages, [{"c0"} for _ in val])

    seed_everything(0)
    model = new_cross_encoder(config)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    untrained = ranking_metrics(rerank_order(cross_encoder_scorer(model, 32), candidates, show_progress=False), candidates.relevant, samples=10)
    history = train_cross_encoder(model, examples, config, records=train, work_dir=tmp_path / "work", show_progress=False)
    trained = ranking_metrics(rerank_order(cross_encoder_scorer(model, 32), candidates, show_progress=False), candidates.relevant, samples=10)

    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before_params[n])]
    assert any("classifier" in n for n in changed) and any("encoder.layer" in n for n in changed)
    assert any("loss" in entry for entry in history)
    assert trained["mrr@10"] >= untrained["mrr@10"], (untrained["mrr@10"], trained["mrr@10"])


def test_listwise_loss_trains_the_tiny_cross_encoder(demo_dir, tiny_cross_encoder_dir, tmp_path):
    """The listwise path (softmax over positive + hard + in-batch negatives) runs and moves the weights."""
    import torch

    from finetune.reranker import new_cross_encoder, train_cross_encoder

    train = load_split(demo_dir, "train")[:8]
    config = load_config("tiny", [f"run_dir={tmp_path}", "finetune.reranker.loss=listwise", "finetune.reranker.hard_negatives=2", "finetune.reranker.random_negatives=1", "finetune.reranker.batch_size=16", "finetune.reranker.learning_rate=1.0e-3"])
    examples = build_examples(train, [[train[(i + 1) % 8]["answer"]] for i in range(8)], 0, seed=0)
    model = new_cross_encoder(config, base_model=str(tiny_cross_encoder_dir))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = train_cross_encoder(model, examples, config, records=train, work_dir=tmp_path / "work", show_progress=False)
    assert any("loss" in e for e in history)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_fresh_head_gets_an_identity_pooler(tiny_cross_encoder_dir, tmp_path):
    """A checkpoint without a classification head gets pooler = tanh(h_CLS) (see reset_pooler);
    a trained cross-encoder keeps its own pooler."""
    import torch
    from transformers import BertModel

    from finetune.reranker import new_cross_encoder

    encoder_only = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_cross_encoder_dir).save_pretrained(encoder_only)
    (encoder_only / "tokenizer.json").write_bytes((tiny_cross_encoder_dir / "tokenizer.json").read_bytes())
    (encoder_only / "tokenizer_config.json").write_bytes((tiny_cross_encoder_dir / "tokenizer_config.json").read_bytes())
    config = load_config("tiny", [f"run_dir={tmp_path}"])
    fresh = new_cross_encoder(config, base_model=str(encoder_only))
    dense = fresh.model.bert.pooler.dense
    assert torch.equal(dense.weight, torch.eye(dense.weight.shape[0])) and not dense.bias.any()
    kept = new_cross_encoder(config, base_model=str(tiny_cross_encoder_dir))
    assert not torch.equal(kept.model.bert.pooler.dense.weight, torch.eye(dense.weight.shape[0]))


def test_layers_keeps_the_first_n_and_the_saved_model_reloads_with_them(tiny_cross_encoder_dir, tmp_path):
    """finetune.reranker.layers=1 cuts the tiny cross-encoder (2 layers) to its first layer, in the
    config too, so the saved folder loads as a 1-layer model; more layers than the base has is refused."""
    import torch

    from finetune.reranker import new_cross_encoder
    from pipeline.config import ConfigError
    from pipeline.encoders import load_cross_encoder

    full = new_cross_encoder(load_config("tiny", [f"run_dir={tmp_path}"]), base_model=str(tiny_cross_encoder_dir))
    cut = new_cross_encoder(load_config("tiny", [f"run_dir={tmp_path}", "finetune.reranker.layers=1"]), base_model=str(tiny_cross_encoder_dir))
    assert len(full.model.bert.encoder.layer) == 2 and len(cut.model.bert.encoder.layer) == 1 and cut.model.config.num_hidden_layers == 1
    assert torch.equal(cut.model.bert.encoder.layer[0].attention.self.query.weight, full.model.bert.encoder.layer[0].attention.self.query.weight)
    cut.save(str(tmp_path / "cut"))
    again = load_cross_encoder(str(tmp_path / "cut"), device="cpu")
    assert len(again.model.bert.encoder.layer) == 1
    pairs = [("What is a B-tree?", "A balanced tree."), ("What is DNS?", "Names to addresses.")]
    assert again.predict(pairs) == pytest.approx(cut.predict(pairs), abs=1e-5)
    with pytest.raises(ConfigError, match=r"finetune.reranker.layers=3: the model has only 2 layers"):
        new_cross_encoder(load_config("tiny", [f"run_dir={tmp_path}", "finetune.reranker.layers=3"]), base_model=str(tiny_cross_encoder_dir))


def test_run_saves_the_cross_encoder_with_its_evaluation_and_training_log(small_data_dir, tiny_cross_encoder_dir, hash_embedding_cls, tmp_path, monkeypatch):
    """The whole command on 6 train questions: the saved model reloads, eval_val.json holds the val
    figures before and after, the train log counts the examples."""
    import json

    import finetune.reranker as reranker
    from pipeline.index import KnowledgeBase, qa_nodes
    from pipeline.encoders import load_cross_encoder

    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={small_data_dir}", f"finetune.reranker.base_model={tiny_cross_encoder_dir}",
                                  "finetune.reranker.limit=6", "finetune.reranker.eval_limit=4", "finetune.reranker.mine_candidates=5"])
    kb = KnowledgeBase.from_nodes(config, qa_nodes(load_split(small_data_dir, "train"), split="train"), embed_model=hash_embedding_cls())
    monkeypatch.setattr(reranker, "open_knowledge_base", lambda config: kb)
    logged = []
    try:
        result = reranker.run(config, show_progress=False, log=logged.append)
    finally:
        kb.close()
    saved = load_cross_encoder(str(result.output), device="cpu")
    assert len(saved.model.bert.encoder.layer) == 2
    evaluation = json.loads((result.output / reranker.EVAL_NAME).read_text())
    assert set(evaluation) == {"protocol", "split", "candidates", "retriever", "base", "reranked"} and evaluation["reranked"]["n"] == 4
    train_log = json.loads((result.output / reranker.TRAIN_LOG_NAME).read_text())
    assert train_log["counts"]["questions"] == 6 and set(train_log["seconds"]) == {"mining", "eval_base", "training", "eval_reranked", "total"}
    assert any("reranked by the fine-tuned cross-encoder" in line for line in logged) and any(line.startswith("wall time:") for line in logged)
