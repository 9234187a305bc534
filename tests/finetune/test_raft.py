"""RAFT triple builder (finetune/raft.py) over the project's own retriever."""

from __future__ import annotations

import json

import pytest

from finetune.raft import LeakError, build_raft_examples, build_split, held_out_ids, main, oracle_fraction
from pipeline.config import load_config
from pipeline.data import load_split
from pipeline.index import qa_node_id, qa_text
from pipeline.retrieve import build_retriever


@pytest.fixture(scope="module")
def config(small_data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("raft-run")
    return load_config("tiny", [f"run_dir={run_dir}", f"data.dir={small_data_dir}", "finetune.raft.num_passages=4", "finetune.raft.context=oracle"])


@pytest.fixture(scope="module")
def train(config):
    return load_split(config.data.dir, "train")


@pytest.fixture(scope="module")
def retriever(config, train, make_kb):
    return build_retriever(config, mode="bm25", top_k=9, kb=make_kb(config, train))


def test_oracle_fraction_follows_oracle_prob_and_is_seeded(train, retriever):
    records = train * 5  # 200 draws: the fraction is within a few points of P
    examples = build_raft_examples(records, retriever, num_passages=4, oracle_prob=0.8, seed=7, show_progress=False)
    # 200 Bernoulli(0.8) draws: standard deviation 0.028, so +-0.07 is a 2.5-sigma band
    assert oracle_fraction(examples) == pytest.approx(0.8, abs=0.07)
    again = build_raft_examples(records, retriever, num_passages=4, oracle_prob=0.8, seed=7, show_progress=False)
    assert again == examples
    other = build_raft_examples(records, retriever, num_passages=4, oracle_prob=0.8, seed=8, show_progress=False)
    assert other != examples
    assert oracle_fraction(build_raft_examples(train, retriever, num_passages=4, oracle_prob=0.0, show_progress=False)) == 0.0
    assert oracle_fraction(build_raft_examples(train, retriever, num_passages=4, oracle_prob=1.0, show_progress=False)) == 1.0


def test_examples_hold_the_oracle_at_its_position_among_mined_distractors(train, retriever):
    examples = build_raft_examples(train, retriever, num_passages=4, oracle_prob=0.5, seed=3, fill_pool=train, show_progress=False)
    positions = set()
    for record, example in zip(train, examples):
        assert len(example.passages) == 4 and len(set(example.passage_ids)) == 4
        oracle_id = qa_node_id(record["question"], record["answer"])
        if example.oracle is None:
            assert oracle_id not in example.passage_ids
            assert example.target == record["answer"].strip()
        else:
            positions.add(example.oracle)
            assert example.passages[example.oracle - 1] == qa_text(record["question"], record["answer"])
            assert example.passage_ids.count(oracle_id) == 1
            assert example.target == f"{record['answer'].strip()} [{example.oracle}]"
        # distractors are the retriever's best for the question, minus the oracle, then random
        # pool pairs when retrieval ran short
        mined = [h.node.metadata["id"] for h in retriever.retrieve(record["question"]) if h.node.metadata["id"] != oracle_id]
        distractors = [i for i in example.passage_ids if i != oracle_id]
        need = len(distractors)
        assert set(mined[:need]) <= set(distractors)
        assert set(distractors) - set(mined) == set() or len(mined) < need
    assert len(positions) > 1  # shuffled: the oracle is not always in one place


def test_citation_can_be_turned_off(train, retriever):
    examples = build_raft_examples(train[:5], retriever, num_passages=3, oracle_prob=1.0, cite_oracle=False, show_progress=False)
    assert [e.target for e in examples] == [r["answer"].strip() for r in train[:5]]


def test_never_uses_the_test_split(config, train, make_kb):
    test = load_split(config.data.dir, "test")
    # a wrongly built knowledge base that also holds the test pairs, marked as test ...
    kb = make_kb(config, train + test, split="train")
    mixed = make_kb(config, test, split="test")
    forbidden = held_out_ids({"test": test})
    for retriever in (build_retriever(config, mode="bm25", top_k=12, kb=kb), build_retriever(config, mode="bm25", top_k=12, kb=mixed)):
        # ... the test questions themselves are the queries that would retrieve test pairs best
        examples = build_raft_examples(train + [{"question": r["question"] + " (paraphrase)", "answer": "x"} for r in test], retriever, num_passages=4, forbidden_ids=forbidden, show_progress=False)
        used = {i for e in examples for i in e.passage_ids}
        assert not used & forbidden
        test_texts = {qa_text(r["question"], r["answer"]) for r in test}
        assert not {p for e in examples for p in e.passages} & test_texts
    with pytest.raises(LeakError, match="held-out"):
        build_raft_examples(test[:1], build_retriever(config, mode="bm25", top_k=5, kb=kb), forbidden_ids=forbidden, show_progress=False)


def test_build_split_forbids_held_out_pairs_and_the_cli_refuses_test(config, train, make_kb, tmp_path, capsys):
    retriever = build_retriever(config, mode="bm25", top_k=9, kb=make_kb(config, train))
    val = build_split(config, "val", retriever=retriever, show_progress=False)
    assert [e.question for e in val] == [r["question"] for r in load_split(config.data.dir, "val")]
    assert main(["--config", "tiny", "--set", f"data.dir={config.data.dir}", "--split", "test", "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "test split is for evaluation only" in capsys.readouterr().err


def test_jsonl_is_inspectable(config, train, retriever, tmp_path):
    from finetune.raft import write_examples

    examples = build_raft_examples(train[:3], retriever, num_passages=4, show_progress=False)
    path = write_examples(examples, tmp_path / "raft.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(r) for r in rows] == [{"question", "answer", "passages", "passage_ids", "oracle", "target"}] * 3
    assert rows[0]["passages"] == list(examples[0].passages)


class ReversingReranker:
    """A node postprocessor that puts the retriever's last candidate first: shows which order wins."""

    def __init__(self):
        self.questions = []

    def postprocess_nodes(self, nodes, query_str):
        self.questions.append(query_str)
        return list(reversed(nodes))


def test_leave_one_out_contexts_are_the_reranked_candidates_without_the_own_pair(train, retriever):
    reranker = ReversingReranker()
    examples = build_raft_examples(train, retriever, num_passages=3, context="loo", reranker=reranker, oracle_prob=1.0, show_progress=False)
    assert reranker.questions == [r["question"] for r in train]  # judged against the trained question itself
    for record, example in zip(train, examples):
        own = qa_node_id(record["question"], record["answer"])
        assert own not in example.passage_ids and qa_text(record["question"], record["answer"]) not in example.passages
        assert example.oracle is None and example.target == record["answer"].strip()  # no oracle, no citation, whatever oracle_prob says
        candidates = [h.node.node_id for h in retriever.retrieve(record["question"]) if h.node.node_id != own]
        assert list(example.passage_ids) == list(reversed(candidates))[:3]  # the reranker's order, cut to the context size
    plain = build_raft_examples(train[:4], retriever, num_passages=3, context="loo", show_progress=False)
    for record, example in zip(train[:4], plain):  # without a reranker: the retriever's order
        own = qa_node_id(record["question"], record["answer"])
        assert list(example.passage_ids) == [h.node.node_id for h in retriever.retrieve(record["question"]) if h.node.node_id != own][:3]


def test_leave_one_out_context_size_is_what_full_gives_its_generator(config):
    from finetune.raft import context_size
    from pipeline.systems import get_system

    loo = load_config("tiny", [f"run_dir={config.run_dir}", "finetune.raft.context=loo", "rerank.top_n=4", "generator.context_top_k=2"])
    assert context_size(loo) == 4  # full reranks and keeps rerank.top_n
    # without reranking full reads the retriever's best rerank.top_n: the same count
    off = load_config("tiny", ["finetune.raft.context=loo", "rerank.enabled=false", "rerank.top_n=4", "generator.context_top_k=2"])
    assert context_size(off) == 4 == get_system("full", off).top_k
    assert context_size(config) == 4  # oracle mode: finetune.raft.num_passages
    with pytest.raises(ValueError, match="context must be 'loo' or 'oracle'"):
        build_raft_examples([], None, context="gold")
