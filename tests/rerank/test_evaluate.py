"""rerank.evaluate: variant names, clear errors for missing models, rerank variants on a real
(in-memory) knowledge base with the tiny random cross-encoder."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from rerank.evaluate import VARIANTS, evaluate_variants, is_variant, parse_variant


def test_variant_names():
    assert parse_variant("ft-hybrid+rerank") == (True, "hybrid", True)
    assert parse_variant("hybrid+rerank") == (False, "hybrid", True)
    assert parse_variant("ft-dense") == (True, "dense", False)
    assert {"hybrid+rerank", "ft-dense", "ft-hybrid+rerank", "ft-hybrid", "dense+rerank"} <= set(VARIANTS)
    assert not is_variant("hybrid") and not is_variant("rerank")
    with pytest.raises(ConfigError, match="ft-hybrid\\+rerank"):
        parse_variant("hybrid+ft")


@pytest.fixture(scope="module")
def corpus(demo_dir, hash_embedding_cls, tmp_path_factory):
    from eval.retrieval import open_book_corpus
    from pipeline.index import KnowledgeBase

    nodes, questions, relevant = open_book_corpus(demo_dir)
    config = load_config("tiny", [f"run_dir={tmp_path_factory.mktemp('ob')}"])
    kb = KnowledgeBase.from_nodes(config, nodes, embed_model=hash_embedding_cls())
    yield nodes, questions["val"][:6], kb
    kb.close()


def test_missing_reranker_and_embedder_are_clear_errors(corpus, tmp_path):
    nodes, questions, kb = corpus
    config = load_config("tiny", [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="python -m finetune.reranker"):
        evaluate_variants(config, nodes, questions, ["hybrid+rerank"], kb=kb, show_progress=False)
    with pytest.raises(ConfigError, match="python -m finetune.embedder"):
        evaluate_variants(config, nodes, questions, ["ft-dense"], kb=kb, show_progress=False)


def test_rerank_variant_reorders_the_retrievers_candidates_by_logit(corpus, tiny_cross_encoder_dir, tmp_path, monkeypatch):
    from llama_index.core.schema import MetadataMode

    from pipeline.retrieve import build_retriever
    from rerank.cross_encoder import CrossEncoderReranker

    nodes, questions, kb = corpus
    config = load_config("tiny", [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.candidates=12"])
    calls = []
    real = CrossEncoderReranker.score_pairs
    monkeypatch.setattr(CrossEncoderReranker, "score_pairs", lambda self, q, p: calls.append(len(p)) or real(self, q, p))
    ranked = evaluate_variants(config, nodes, questions, ["hybrid+rerank", "bm25+rerank"], kb=kb, depth=5, show_progress=False)
    variant_calls = list(calls)
    reference = CrossEncoderReranker.from_config(config)
    for i, question in enumerate(questions):
        hits = build_retriever(config, "hybrid", 12, kb=kb).retrieve(question)
        assert sorted(ranked["hybrid+rerank"][i]) == sorted(h.node.node_id for h in hits)  # all 12 candidates, reordered
        logits = reference.score_pairs(question, [h.node.get_content(metadata_mode=MetadataMode.NONE) for h in hits])
        expected = [hits[j].node.node_id for j in sorted(range(len(hits)), key=lambda j: -float(logits[j]))]
        assert ranked["hybrid+rerank"][i] == expected
    # scores are cached per (question, passage): the bm25 variant only scored passages hybrid had not returned
    hybrid_pairs = sum(variant_calls[: len(questions)])
    assert hybrid_pairs == 12 * len(questions) and sum(variant_calls) < hybrid_pairs + 12 * len(questions)


def test_rerank_variant_follows_the_retrieval_weight(corpus, tiny_cross_encoder_dir, tmp_path):
    """With rerank.retrieval_weight=1 a +rerank variant is exactly its retriever's order; the
    evaluation and the postprocessor share one interpolation."""
    from pipeline.retrieve import build_retriever
    from rerank.cross_encoder import CrossEncoderReranker

    nodes, questions, kb = corpus
    keep = load_config("tiny", [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.candidates=12", "rerank.retrieval_weight=1.0"])
    ranked = evaluate_variants(keep, nodes, questions, ["hybrid+rerank"], kb=kb, depth=5, show_progress=False)
    half = load_config("tiny", [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.candidates=12", "rerank.retrieval_weight=0.5", "rerank.top_n=12"])
    mixed = evaluate_variants(half, nodes, questions, ["hybrid+rerank"], kb=kb, depth=5, show_progress=False)
    postprocessor = CrossEncoderReranker.from_config(half)
    for i, question in enumerate(questions):
        hits = build_retriever(keep, "hybrid", 12, kb=kb).retrieve(question)
        assert ranked["hybrid+rerank"][i] == [h.node.node_id for h in hits]
        assert mixed["hybrid+rerank"][i] == [n.node.node_id for n in postprocessor.postprocess_nodes(hits, query_str=question)]
