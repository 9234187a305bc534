"""rerank.evaluate: variant names, clear errors for missing models, rerank variants on a real
(in-memory) knowledge base with the tiny random cross-encoder."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from rerank.evaluate import VARIANTS, Variant, evaluate_variants, grid_markdown, is_variant, parse_variant


def test_variant_names():
    assert parse_variant("ft-hybrid+rerank") == (False, True, "hybrid", True)
    assert parse_variant("hybrid+rerank") == (False, False, "hybrid", True)
    assert parse_variant("ft-dense") == (False, True, "dense", False)
    assert parse_variant("rw-ft-dense") == Variant(rewritten=True, finetuned=True, base="dense", rerank=False)
    assert {"hybrid+rerank", "ft-dense", "ft-hybrid+rerank", "ft-hybrid", "dense+rerank", "rw-dense", "rw-ft-hybrid+rerank"} <= set(VARIANTS)
    assert not is_variant("hybrid") and not is_variant("rerank")
    with pytest.raises(ConfigError, match="ft-hybrid\\+rerank"):
        parse_variant("hybrid+ft")


@pytest.fixture(scope="module")
def corpus(demo_dir, hash_embedding_cls, tmp_path_factory):
    from pipeline.data import open_book_corpus
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


def test_rewritten_variant_searches_with_the_question_and_its_rewrites(corpus, tmp_path):
    """rw-: each question's rewrites ride in custom_embedding_strs as the engine passes them, so the
    ranking is the retriever's for [question, *rewrites]; an empty rewrite list is the question alone."""
    from llama_index.core.schema import QueryBundle

    from pipeline.retrieve import build_retriever

    nodes, questions, kb = corpus
    config = load_config("tiny", [f"run_dir={tmp_path}"])
    rewrites = [[nodes[i].text] if i % 2 == 0 else [] for i in range(len(questions))]  # a passage of the corpus as the "rewrite"
    ranked = evaluate_variants(config, nodes, questions, ["dense", "rw-dense", "rw-hybrid"], kb=kb, depth=5, rewrites=rewrites, show_progress=False)
    for i, question in enumerate(questions):
        for name, base in (("rw-dense", "dense"), ("rw-hybrid", "hybrid")):
            bundle = QueryBundle(query_str=question, custom_embedding_strs=[question, *rewrites[i]] if rewrites[i] else None)
            assert ranked[name][i] == [h.node.node_id for h in build_retriever(config, base, 5, kb=kb).retrieve(bundle)]
        if not rewrites[i]:
            assert ranked["rw-dense"][i] == ranked["dense"][i]
    assert ranked["rw-dense"] != ranked["dense"]  # the rewrites moved something
    with pytest.raises(ValueError, match="one list of rewrites per question"):
        evaluate_variants(config, nodes, questions, ["rw-dense"], kb=kb, rewrites=rewrites[:2], show_progress=False)


def test_interpolation_grid_spans_the_reranker_alone_to_the_first_stage(demo_dir, hash_embedding_cls, tiny_cross_encoder_dir, tmp_path):
    """w = 1 reproduces the first stage, w = 0 is the cross-encoder's own order; the best weight
    is the grid's maximum and its Delta is paired against the first stage."""
    from pipeline.metrics import retrieval_per_query
    from pipeline.data import open_book_corpus
    from rerank.evaluate import interpolation_grid

    config = load_config("tiny", [f"run_dir={tmp_path}", "rerank.candidates=8", "eval.bootstrap_samples=50"])
    result = interpolation_grid(config, str(demo_dir), "val", "dense", {"tiny": str(tiny_cross_encoder_dir)}, weights=[0.0, 0.5, 1.0], embed_model=hash_embedding_cls(), show_progress=False)
    row, first = result["rerankers"]["tiny"], result["first_stage"]
    assert row["weights"]["1.0"]["mrr@10"] == pytest.approx(first["mrr@10"])
    assert row["best_weight"] == max((0.0, 0.5, 1.0), key=lambda w: (round(row["weights"][str(w)]["mrr@10"], 9), -w))
    assert row["at_best"]["mrr@10"] == pytest.approx(row["weights"][str(row["best_weight"])]["mrr@10"])
    assert row["delta_vs_first_stage"]["diff"] == pytest.approx(row["at_best"]["mrr@10"] - first["mrr@10"]) and row["ms_per_query_p50"] > 0
    # w = 0 by hand: the candidates of the first stage ordered by the cross-encoder's logits
    from pipeline.index import KnowledgeBase
    from pipeline.retrieve import build_retriever
    from rerank.cross_encoder import CrossEncoderReranker

    nodes, questions, relevant = open_book_corpus(demo_dir)
    kb = KnowledgeBase.from_nodes(config, nodes, embed_model=hash_embedding_cls())
    try:
        scorer, ranked = CrossEncoderReranker.from_config(config, model=str(tiny_cross_encoder_dir)), []
        for question in questions["val"]:
            hits = build_retriever(config, "dense", 8, kb=kb).retrieve(question)
            logits = scorer.score_pairs(question, [h.node.text for h in hits])
            ranked.append([hits[i].node.node_id for i in sorted(range(len(hits)), key=lambda i: -float(logits[i]))])
    finally:
        kb.close()
    by_hand = retrieval_per_query(ranked, relevant["val"])["mrr@10"]
    assert row["weights"]["0.0"]["mrr@10"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert "| tiny |" in grid_markdown(result) and "Delta vs first stage" in grid_markdown(result)


def test_interpolation_grid_refuses_bad_input_with_the_fix(tmp_path, capsys):
    from rerank.evaluate import main

    config = load_config("tiny", [f"run_dir={tmp_path}"])
    from rerank.evaluate import interpolation_grid

    with pytest.raises(ConfigError, match="without rw- or \\+rerank"):
        interpolation_grid(config, "unused", "val", "dense+rerank", {"x": "y"})
    with pytest.raises(ConfigError, match="--reranker NAME=DIR"):
        interpolation_grid(config, "unused", "val", "dense", {})
    with pytest.raises(ConfigError, match="must lie in \\[0, 1\\]"):
        interpolation_grid(config, "unused", "val", "dense", {"x": "y"}, weights=[1.5])
    assert main(["--config", "tiny", "--set", f"run_dir={tmp_path}", "--reranker", "no-equals-sign"]) == 2
    assert "write NAME=DIR" in capsys.readouterr().err


def test_a_query_likelihood_reranker_is_checked_as_an_adapter_folder(tmp_path):
    from rerank.evaluate import check_reranker

    config = load_config("tiny", ["rerank.kind=query-likelihood", f"rerank.model={tmp_path}"])
    with pytest.raises(ConfigError, match="python -m finetune.ql_reranker --config tiny"):
        check_reranker(config)
    (tmp_path / "adapter_config.json").write_text("{}")
    check_reranker(config)  # weights are checked when they load
