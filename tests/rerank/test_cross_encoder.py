"""CrossEncoderReranker: ordering, top_n, metadata, no mutation, lazy loading, errors.

The model is a random-weight 2-layer cross-encoder built once per session (`tiny_cross_encoder_dir`):
its scores mean nothing, which is the point: the expected order is computed from the same model's
raw scores, so the tests check the postprocessor's logic, not a model's quality."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from helpers import TECH_PASSAGES
from rerank import RERANK_METADATA_KEYS, CrossEncoderReranker

QUESTION = "What does a B-tree index speed up in a relational database?"
PASSAGES = TECH_PASSAGES


def make_nodes(scores=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, None)) -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(id_=f"n{i}", text=text, metadata={"id": f"n{i}", "source": "test"}, excluded_llm_metadata_keys=["id"]),
            score=score,
        )
        for i, (text, score) in enumerate(zip(PASSAGES, scores))
    ]


@pytest.fixture(scope="module")
def reranker(tiny_cross_encoder_dir) -> CrossEncoderReranker:
    return CrossEncoderReranker(model=str(tiny_cross_encoder_dir), top_n=3, batch_size=2, device="cpu")


def raw_logits(reranker: CrossEncoderReranker, question: str = QUESTION) -> np.ndarray:
    return reranker.score_pairs(question, PASSAGES)


def test_constructor_is_cheap_and_loading_is_lazy(monkeypatch, tiny_cross_encoder_dir):
    import pipeline.encoders

    calls = []
    real = pipeline.encoders.load_cross_encoder
    monkeypatch.setattr(pipeline.encoders, "load_cross_encoder", lambda *a, **k: calls.append(a) or real(*a, **k))
    reranker = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), top_n=2, device="cpu")
    assert not reranker.loaded and calls == []
    assert reranker.postprocess_nodes([], query_str=QUESTION) == []  # nothing to score: still not loaded
    assert calls == []
    reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    assert reranker.loaded and len(calls) == 1


def test_missing_model_fails_on_first_use_naming_it(tmp_path):
    from pipeline.models import ModelNotFoundError

    reranker = CrossEncoderReranker(model=str(tmp_path / "no-such-reranker"), device="cpu")  # fine: lazy
    with pytest.raises(ModelNotFoundError, match="no-such-reranker"):
        reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)


def test_orders_by_cross_encoder_logit_and_keeps_top_n(reranker):
    logits = raw_logits(reranker)
    assert len(set(np.round(logits, 6))) == len(PASSAGES), "random model gave ties; the test needs distinct scores"
    expected = [f"n{i}" for i in np.argsort(-logits)[:3]]
    out = reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    assert [n.node.node_id for n in out] == expected
    assert len(out) == 3
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)


def test_top_n_larger_than_candidates_returns_all(tiny_cross_encoder_dir):
    reranker = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), top_n=50, device="cpu")
    assert len(reranker.postprocess_nodes(make_nodes()[:4], query_str=QUESTION)) == 4


def test_metadata_records_retrieval_and_rerank_positions(reranker):
    logits = raw_logits(reranker)
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUESTION)
    for new_rank, hit in enumerate(out, start=1):
        meta = hit.node.metadata
        i = int(hit.node.node_id[1:])
        assert meta["retrieval_rank"] == i + 1
        assert meta["retrieval_score"] == nodes[i].score
        assert meta["rerank_rank"] == new_rank
        assert meta["rerank_logit"] == pytest.approx(float(logits[i]), abs=1e-5)
        assert meta["rerank_score"] == pytest.approx(1 / (1 + math.exp(-float(logits[i]))), abs=1e-6)
        assert hit.score == meta["rerank_score"]
        assert meta["source"] == "test"  # the original metadata is kept
        # bookkeeping never reaches prompts or embeddings
        for key in RERANK_METADATA_KEYS:
            assert key in hit.node.excluded_llm_metadata_keys and key in hit.node.excluded_embed_metadata_keys
        assert "rerank" not in hit.node.get_content(metadata_mode=MetadataMode.LLM)


def test_retrieval_score_none_is_kept_as_none(tiny_cross_encoder_dir):
    reranker = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), top_n=len(PASSAGES), device="cpu")
    out = reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    last = next(h for h in out if h.node.node_id == "n6")
    assert last.node.metadata["retrieval_score"] is None and last.node.metadata["retrieval_rank"] == 7


def test_never_mutates_the_callers_nodes(reranker):
    nodes = make_nodes()
    snapshot = copy.deepcopy([(n.node.node_id, n.score, dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys), list(n.node.excluded_embed_metadata_keys), n.node.text) for n in nodes])
    out = reranker.postprocess_nodes(nodes, query_str=QUESTION)
    after = [(n.node.node_id, n.score, dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys), list(n.node.excluded_embed_metadata_keys), n.node.text) for n in nodes]
    assert after == snapshot
    assert all(o.node is not n.node for o in out for n in nodes)
    assert all(o.node.metadata is not n.node.metadata for o in out for n in nodes)


def test_scores_the_original_question_not_the_hypothetical(reranker):
    plain = reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    bundle = QueryBundle(query_str=QUESTION, custom_embedding_strs=["A hypothetical answer about B-trees and disk pages."])
    hyde = reranker.postprocess_nodes(make_nodes(), query_bundle=bundle)
    assert [n.node.node_id for n in hyde] == [n.node.node_id for n in plain]
    assert [n.score for n in hyde] == pytest.approx([n.score for n in plain])


class _FakeModel:
    """Stands in for a CrossEncoder where only the call pattern matters."""

    def __init__(self, scores, labels=1):
        self.scores, self.labels, self.calls = scores, labels, []

    def predict(self, pairs, batch_size, **kwargs):
        self.calls.append((list(pairs), batch_size))
        return np.array([[s] * self.labels for s in self.scores[: len(pairs)]], dtype=np.float32)


def test_batches_pairs_and_breaks_ties_by_retrieval_order():
    fake = _FakeModel([1.0, 3.0, 1.0, 3.0, 2.0, 0.0, -1.0])
    reranker = CrossEncoderReranker.from_model(fake, top_n=5, batch_size=4)
    out = reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)
    assert [n.node.node_id for n in out] == ["n1", "n3", "n4", "n0", "n2"]
    (pairs, batch_size), = fake.calls
    assert batch_size == 4 and pairs[0] == (QUESTION, PASSAGES[0]) and len(pairs) == len(PASSAGES)


def test_multi_label_model_is_refused_with_the_fix():
    reranker = CrossEncoderReranker.from_model(_FakeModel([0.1] * 7, labels=3), name="nli-model")
    with pytest.raises(ValueError, match=r"'nli-model' outputs 3 labels.*num_labels=1"):
        reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)


@pytest.mark.parametrize("kwargs", [{}, {"query_str": "   "}])
def test_missing_or_empty_question_is_a_clear_error(reranker, kwargs):
    with pytest.raises(ValueError, match="question"):
        reranker.postprocess_nodes(make_nodes(), **kwargs)


def test_from_config_reads_the_rerank_section(tiny_cross_encoder_dir):
    from pipeline.config import load_config

    config = load_config("tiny", [f"rerank.model={tiny_cross_encoder_dir}", "rerank.top_n=2", "rerank.batch_size=7", "rerank.max_length=64"])
    reranker = CrossEncoderReranker.from_config(config)
    assert (reranker.model, reranker.top_n, reranker.batch_size, reranker.max_length, reranker.device) == (str(tiny_cross_encoder_dir), 2, 7, 64, "cpu")
    assert not reranker.loaded
    assert len(reranker.postprocess_nodes(make_nodes(), query_str=QUESTION)) == 2


def test_scores_are_cached_per_question_and_passage(tiny_cross_encoder_dir):
    reranker = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), top_n=3, cache_size=10)
    calls = []
    model = reranker.load()
    original = model.predict

    def counting_predict(pairs, **kwargs):
        calls.append(len(pairs))
        return original(pairs, **kwargs)

    model.predict = counting_predict
    first = reranker.score_pairs("What is a heap?", ["a tree", "a list", "a tree"])
    again = reranker.score_pairs("What is a heap?", ["a list", "a graph"])
    other = reranker.score_pairs("What is a stack?", ["a list"])
    assert calls == [2, 1, 1]  # duplicates and known pairs are not scored again
    assert first[0] == first[2] and again[0] == first[1]
    assert other.shape == (1,)


# logits of _FakeModel below, min-max [0.5, 1, 0.5, 1, 0.75, 0.25, 0]; retrieval scores min-max = themselves
INTERPOLATION_LOGITS = [1.0, 3.0, 1.0, 3.0, 2.0, 0.0, -1.0]
INTERPOLATION_SCORES = (1.0, 0.5, 0.45, 0.4, 0.3, 0.2, 0.0)


@pytest.mark.parametrize(
    "weight, expected",
    [
        (0.0, ["n1", "n3", "n4", "n0", "n2"]),  # the cross-encoder alone
        # 0.7 * logit + 0.3 * retrieval: n0 0.65 overtakes n4 0.615 (its retriever score is the best)
        (0.3, ["n1", "n3", "n0", "n4", "n2"]),
        (1.0, ["n0", "n1", "n2", "n3", "n4"]),  # the retriever's order
    ],
)
def test_retrieval_weight_interpolates_the_two_stages(weight, expected):
    reranker = CrossEncoderReranker.from_model(_FakeModel(INTERPOLATION_LOGITS), top_n=5, retrieval_weight=weight)
    out = reranker.postprocess_nodes(make_nodes(INTERPOLATION_SCORES), query_str=QUESTION)
    assert [n.node.node_id for n in out] == expected
    by_id = {n.node.node_id: n for n in out}
    # the agent's grade stays the cross-encoder's own probability, whatever orders the list
    assert by_id["n1"].score == pytest.approx(1 / (1 + math.exp(-3.0)))
    if weight == 0.3:
        assert by_id["n0"].node.metadata["rerank_combined"] == pytest.approx(0.65)
        assert by_id["n4"].node.metadata["rerank_combined"] == pytest.approx(0.615)


def test_interpolation_without_retrieval_scores_uses_positions():
    from rerank.cross_encoder import interpolated_order

    # equal logits: the order is the positions', first to last
    order, combined = interpolated_order([2.0, 2.0, 2.0], [None, 0.3, 0.1], 0.5)
    assert order == [0, 1, 2] and combined == pytest.approx([1.0, 0.75, 0.5])
    with pytest.raises(ValueError, match=r"retrieval_weight=1.5 must lie in \[0, 1\]"):
        interpolated_order([1.0], [1.0], 1.5)


def test_from_config_reads_the_retrieval_weight(tiny_cross_encoder_dir):
    from pipeline.config import ConfigError, load_config

    config = load_config("tiny", [f"rerank.model={tiny_cross_encoder_dir}", "rerank.retrieval_weight=0.3"])
    assert CrossEncoderReranker.from_config(config).retrieval_weight == 0.3
    with pytest.raises(ConfigError, match="retrieval_weight"):
        load_config("tiny", ["rerank.retrieval_weight=2"])
