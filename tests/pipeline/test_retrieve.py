"""Retrievers: weighted fusion arithmetic, metadata stamps, no mutation, hypothetical passages,
bad queries, the one builder. Stores are in-memory knowledge bases over a few handmade nodes and
the hashed bag-of-words embedder (the model is irrelevant here); MiniLM figures live in
tests/eval/test_retrieval.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from pipeline.config import load_config
from pipeline.index import KnowledgeBase, qa_nodes
from pipeline.retrieve import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    QueryError,
    build_retriever,
    fuse,
)

PAIRS = [
    ("What is a B-tree?", "A balanced search tree whose wide nodes fill disk pages, used by database indexes."),
    ("What is TCP slow start?", "TCP grows its congestion window exponentially until loss or the threshold."),
    ("What is a mutex?", "A lock giving one thread at a time exclusive access to shared data."),
    ("What is DNS?", "The Domain Name System maps host names to IP addresses through resolvers."),
    ("What is a bloom filter?", "A bit array with several hash functions answering set membership with false positives."),
    ("What is sharding?", "Splitting a database horizontally across servers by a shard key."),
]


def _hit(node_id: str, score: float, text: str | None = None) -> NodeWithScore:
    return NodeWithScore(node=TextNode(id_=node_id, text=text or node_id, metadata={"id": node_id}), score=score)


@pytest.fixture()
def config(tmp_path):
    return load_config("tiny", [f"run_dir={tmp_path}", f"index.dir={tmp_path / 'index'}"])


@pytest.fixture()
def kb(config, hash_embedding_cls):
    records = [{"question": q, "answer": a} for q, a in PAIRS]
    base = KnowledgeBase.from_nodes(config, qa_nodes(records, source="handmade"), embed_model=hash_embedding_cls())
    yield base
    base.close()


# ---------------------------------------------------------------- fusion arithmetic


def test_weighted_rrf_matches_hand_computation():
    results = {"dense": [_hit("a", 0.9), _hit("b", 0.8), _hit("c", 0.1)], "bm25": [_hit("c", 7.0), _hit("a", 3.0)]}
    fused = fuse(results, mode="rrf", rrf_k=10, weights={"dense": 2.0, "bm25": 0.5}, top_k=3)
    expected = {"a": 2 / 11 + 0.5 / 12, "b": 2 / 12, "c": 2 / 13 + 0.5 / 11}
    assert [h.node.node_id for h in fused] == sorted(expected, key=lambda i: -expected[i])
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.node.node_id])
        assert hit.node.metadata["fusion_score"] == pytest.approx(expected[hit.node.node_id])
    a = next(h for h in fused if h.node.node_id == "a").node.metadata
    assert (a["dense_rank"], a["dense_score"], a["bm25_rank"], a["bm25_score"], a["retriever"]) == (1, 0.9, 2, 3.0, "hybrid")
    b = next(h for h in fused if h.node.node_id == "b").node.metadata
    assert b["bm25_rank"] is None and b["bm25_score"] is None


def test_k_and_weights_change_the_order():
    results = {"dense": [_hit("x", 1.0), _hit("y", 0.5)], "bm25": [_hit("y", 5.0), _hit("z", 1.0)]}
    equal = [h.node.node_id for h in fuse(results, rrf_k=60, top_k=3)]
    assert equal[0] == "y"  # found by both
    dense_heavy = [h.node.node_id for h in fuse(results, rrf_k=1, weights={"dense": 3.0, "bm25": 1.0}, top_k=3)]
    assert dense_heavy[0] == "x"
    only_bm25 = fuse(results, weights={"dense": 0.0, "bm25": 1.0}, top_k=3)
    assert [h.node.node_id for h in only_bm25][:2] == ["y", "z"]


def test_score_fusion_min_max_normalizes_each_list():
    results = {"dense": [_hit("a", 0.9), _hit("b", 0.7), _hit("c", 0.5)], "bm25": [_hit("c", 10.0), _hit("b", 4.0), _hit("d", 2.0)]}
    fused = fuse(results, mode="score", weights={"dense": 1.0, "bm25": 1.0}, top_k=4)
    expected = {"a": 1.0, "b": 0.5 + 0.25, "c": 0.0 + 1.0, "d": 0.0}
    assert {h.node.node_id: h.score for h in fused} == pytest.approx(expected)
    assert [h.node.node_id for h in fused] == ["a", "c", "b", "d"]  # a and c tie at 1.0: best single rank first
    single = fuse({"dense": [_hit("s", 0.3)]}, mode="score", top_k=1)
    assert single[0].score == 1.0  # one candidate: no spread, full credit


def test_fusion_deduplicates_and_never_mutates_its_inputs():
    results = {"dense": [_hit("a", 0.9), _hit("a", 0.8), _hit("b", 0.5)], "bm25": [_hit("b", 2.0)]}
    snapshot = copy.deepcopy(results)
    fused = fuse(results, top_k=10)
    assert sorted(h.node.node_id for h in fused) == ["a", "b"]
    assert next(h for h in fused if h.node.node_id == "a").node.metadata["dense_rank"] == 1
    for name in results:
        for before, after in zip(snapshot[name], results[name]):
            assert before.node.metadata == after.node.metadata and before.score == after.score
    # the stamps never enter embeddings or prompts
    node = fused[0].node
    assert "fusion_score" not in node.get_content(MetadataMode.LLM) and "dense_rank" not in node.get_content(MetadataMode.EMBED)


def test_fusion_rejects_bad_settings():
    with pytest.raises(ValueError, match="fusion mode"):
        fuse({"dense": []}, mode="max")
    with pytest.raises(ValueError, match="rrf_k"):
        fuse({"dense": []}, rrf_k=0)
    with pytest.raises(ValueError, match="unknown retrievers"):
        fuse({"dense": []}, weights={"sparse": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        fuse({"dense": [_hit("a", 1.0)]}, weights={"dense": -1.0})


class _Fixed(BaseRetriever):
    def __init__(self, hits):
        super().__init__()
        self.hits, self.seen = hits, []

    def _retrieve(self, query_bundle):
        self.seen.append(query_bundle)
        return list(self.hits)


def test_hybrid_retriever_is_a_llamaindex_retriever_that_fuses_its_parts():
    dense, bm25 = _Fixed([_hit("a", 0.9), _hit("b", 0.2)]), _Fixed([_hit("b", 3.0)])
    hybrid = HybridRetriever({"dense": dense, "bm25": bm25}, mode="rrf", rrf_k=5, weights={"dense": 1.0, "bm25": 2.0}, top_k=1)
    bundle = QueryBundle(query_str="q", custom_embedding_strs=["hypothetical passage"])
    hits = hybrid.retrieve(bundle)
    assert [h.node.node_id for h in hits] == ["b"] and hits[0].score == pytest.approx(1 / 7 + 2 / 6)
    assert dense.seen[0].custom_embedding_strs == ["hypothetical passage"]  # passed through untouched
    with pytest.raises(QueryError, match="empty"):
        hybrid.retrieve("   ")
    with pytest.raises(ValueError, match="unknown retrievers"):
        HybridRetriever({"dense": dense}, weights={"bm25": 1.0})


# ---------------------------------------------------------------- retrievers over a knowledge base


def test_dense_and_bm25_find_the_pair_and_stamp_rank_and_score(kb, config):
    for cls, name in ((DenseRetriever, "dense"), (BM25Retriever, "bm25")):
        hits = cls(kb, top_k=3).retrieve("How does a bloom filter answer set membership?")
        assert hits[0].node.metadata["question"] == "What is a bloom filter?"
        assert [h.node.metadata[f"{name}_rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert [h.node.metadata[f"{name}_score"] for h in hits] == [h.score for h in hits]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    dense = DenseRetriever(kb, top_k=1).retrieve("What is a mutex?")[0]
    q = np.array(kb.embed_model.get_query_embedding("What is a mutex?"))
    d = np.array(kb.embed_model.get_text_embedding(dense.node.get_content(MetadataMode.EMBED)))
    cosine = float(q @ d / np.linalg.norm(q) / np.linalg.norm(d))
    assert dense.score == pytest.approx(cosine, abs=1e-5)  # a cosine, not Chroma's exp(-distance)
    # the knowledge base's nodes are untouched by the stamps on the returned copies
    assert all("dense_rank" not in n.metadata and "bm25_rank" not in n.metadata for n in kb.nodes.values())


def test_hypothetical_passage_moves_dense_to_the_mean_and_adds_terms_to_bm25(kb):
    dense = DenseRetriever(kb, top_k=6)
    question = "Tell me more, please?"
    hypothetical = "names resolved to IP addresses by resolvers"
    bundle = QueryBundle(query_str=question, custom_embedding_strs=[hypothetical, question])
    embed = kb.embed_model
    expected = [(q + t) / 2 for q, t in zip(embed.get_query_embedding(question), embed.get_text_embedding(hypothetical))]
    assert dense.query_embedding(bundle) == pytest.approx(expected)
    assert dense.retrieve(bundle)[0].node.metadata["question"] == "What is DNS?"

    bm25 = BM25Retriever(kb, top_k=3)
    assert bm25.retrieve(question) == []  # no word of it is in the corpus: nothing to match
    hits = bm25.retrieve(QueryBundle(query_str=question, custom_embedding_strs=[hypothetical]))
    assert hits[0].node.metadata["question"] == "What is DNS?"


def test_question_weight_mixes_the_question_and_the_hypotheticals_mean(kb):
    """rewrite.hyde_question_weight w: w * question + (1 - w) * mean(hypotheticals); w = 1 searches
    with the question alone, w = 0 with the hypotheticals alone; build_retriever passes it on."""
    question = "What is a mutex?"
    hypotheticals = ["names resolved to IP addresses by resolvers", "a bit array with hash functions"]
    bundle = QueryBundle(query_str=question, custom_embedding_strs=[question, *hypotheticals])
    embed = kb.embed_model
    q = np.array(embed.get_query_embedding(question))
    h = np.mean([embed.get_text_embedding(t) for t in hypotheticals], axis=0)
    assert DenseRetriever(kb, top_k=6, question_weight=0.8).query_embedding(bundle) == pytest.approx(list(0.8 * q + 0.2 * h))
    assert DenseRetriever(kb, top_k=6).query_embedding(bundle) == pytest.approx(list((q + 2 * h) / 3))  # None: the plain mean of three
    alone = [hit.node.node_id for hit in DenseRetriever(kb, top_k=6).retrieve(question)]
    assert [hit.node.node_id for hit in DenseRetriever(kb, top_k=6, question_weight=1.0).retrieve(bundle)] == alone
    by_hypotheticals = [hit.node.node_id for hit in DenseRetriever(kb, top_k=6).retrieve(QueryBundle(query_str=question, embedding=list(h)))]
    assert [hit.node.node_id for hit in DenseRetriever(kb, top_k=6, question_weight=0.0).retrieve(bundle)] == by_hypotheticals != alone
    config = load_config("tiny", ["rewrite.hyde_question_weight=0.9"])
    assert build_retriever(config, "dense", 3, kb=kb).question_weight == 0.9
    assert build_retriever(config, "hybrid", 3, kb=kb).retrievers["dense"].question_weight == 0.9
    with pytest.raises(ValueError, match="question_weight=1.5 must be between 0 and 1"):
        DenseRetriever(kb, question_weight=1.5)


def test_bad_queries(kb):
    for retriever in (DenseRetriever(kb), BM25Retriever(kb)):
        for bad in ("", "   \n\t"):
            with pytest.raises(QueryError, match="empty"):
                retriever.retrieve(bad)
    long_query = ("What is a bloom filter? " * 5000)[:100_000]
    for retriever in (DenseRetriever(kb, top_k=2), BM25Retriever(kb, top_k=2)):
        with pytest.warns(UserWarning, match=r"query of 100000 characters truncated to its first 2000"):
            hits = retriever.retrieve(long_query)
        assert hits and hits[0].node.metadata["question"] == "What is a bloom filter?"
    with pytest.raises(ValueError, match="top_k"):
        DenseRetriever(kb, top_k=0)


def test_build_retriever_modes_and_config(kb, config):
    config.retrieve.fusion, config.retrieve.rrf_k, config.retrieve.dense_weight, config.retrieve.bm25_weight = "score", 7.0, 0.3, 1.7
    hybrid = build_retriever(config, "hybrid", 4, kb=kb)
    assert isinstance(hybrid, HybridRetriever)
    assert (hybrid.mode, hybrid.rrf_k, hybrid.weights, hybrid.top_k) == ("score", 7.0, {"dense": 0.3, "bm25": 1.7}, 4)
    assert {name: r.top_k for name, r in hybrid.retrievers.items()} == {"dense": config.retrieve.candidates, "bm25": config.retrieve.candidates}
    hits = hybrid.retrieve("Which system maps host names to addresses?")
    assert len(hits) == 4 and hits[0].node.metadata["question"] == "What is DNS?"
    assert len({h.node.node_id for h in hits}) == 4
    assert isinstance(build_retriever(config, "dense", kb=kb), DenseRetriever)
    assert build_retriever(config, "bm25", kb=kb).top_k == config.retrieve.top_k
    config.retrieve.mode = "bm25"
    assert isinstance(build_retriever(config, kb=kb), BM25Retriever)
    with pytest.raises(ValueError, match="mode must be one of dense, bm25, hybrid; got 'sparse'"):
        build_retriever(config, "sparse", kb=kb)
    big = build_retriever(config, "dense", 50, kb=kb).retrieve("database")
    assert len(big) == len(PAIRS)  # top_k beyond the corpus returns the corpus


def test_bm25_only_knowledge_base_needs_no_embedder(config):
    base = KnowledgeBase.from_nodes(config, qa_nodes([{"question": q, "answer": a} for q, a in PAIRS]), with_vectors=False)
    assert BM25Retriever(base, top_k=1).retrieve("shard key")[0].node.metadata["question"] == "What is sharding?"
    assert base._embed_model is None


def test_cli_help_and_missing_index(tmp_path, capsys):
    from pipeline.retrieve import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--mode", "--top-k", "--hypothetical", "--json", "--config"))
    assert main(["--set", f"index.dir={tmp_path / 'none'}", "What is DNS?"]) == 2
    assert f"no index at {tmp_path / 'none'}" in capsys.readouterr().err
