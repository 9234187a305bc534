"""Retrieval evaluation: the protocols, the CLI, fusion tuning, and the known MiniLM/BM25 figures
on the seed data (open-book, test split) through the system's own retriever classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.metrics import retrieval_per_query
from eval.retrieval import evaluate_closed_book, main, query_embeddings, run_retriever, to_markdown, tune_fusion
from pipeline.metrics import DEPTH
from pipeline.data import open_book_corpus
from pipeline.config import load_config


def _means(values):
    return {k: float(np.mean(v)) for k, v in values.items()}


def test_open_book_corpus_is_every_answer_and_gold_is_the_own_answer(demo_dir):
    nodes, questions, relevant = open_book_corpus(demo_dir)
    assert len(nodes) == 221 + 47 + 49 and len(questions["test"]) == 49
    by_id = {n.node_id: n for n in nodes}
    for question, gold in zip(questions["val"], relevant["val"]):
        (node_id,) = gold
        assert by_id[node_id].metadata["question"] == question and by_id[node_id].text == by_id[node_id].metadata["answer"]


def test_cli_bm25_json_and_markdown(demo_dir, tmp_path, capsys):
    out = tmp_path / "res" / "bm25.json"
    args = ["--data", str(demo_dir), "--protocol", "open-book", "--split", "val", "--retrievers", "bm25", "--quiet", "--set", f"run_dir={tmp_path}"]
    assert main([*args, "--format", "json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["protocol"], result["split"], list(result["retrievers"])) == ("open-book", "val", ["bm25"])
    bm25 = result["retrievers"]["bm25"]
    for metric in ("recall@1", "recall@5", "recall@10", "recall@20", "mrr@10", "ndcg@10", "hit_rate"):
        low, high = bm25["ci95"][metric]
        assert 0.0 <= low <= bm25[metric] <= high <= 1.0
    assert bm25["recall@1"] <= bm25["recall@5"] <= bm25["recall@20"] and bm25["n"] == 47
    assert bm25["recall@5"] > 0.5, "BM25 must find most of the demo answers in its top 5"
    # the run's config is named after it, so a comparison's ragft_config.yaml in the same folder is kept
    assert json.loads(out.read_text()) == result and (out.parent / f"{out.stem}.ragft_config.yaml").is_file() and not (out.parent / "ragft_config.yaml").exists()
    assert main([*args, "--format", "md"]) == 0
    table = capsys.readouterr().out
    assert "| bm25 | " in table and "recall@1" in table


def test_cli_rejects_bad_arguments(demo_dir, capsys):
    assert main(["--data", str(demo_dir), "--retrievers", "dense,sparse", "--quiet"]) == 2
    assert "sparse" in capsys.readouterr().err
    assert main(["--data", str(demo_dir), "--protocol", "closed-book", "--tune", "--quiet"]) == 2
    assert "--tune needs --protocol open-book" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--protocol", "--split", "--retrievers", "--format", "--tune", "--sim-threshold"))


def test_full_stack_and_its_one_part_off_variants(demo_dir, tmp_path, tiny_cross_encoder_dir, capsys):
    """`full` in eval.retrieval is the profile's own stack (hybrid + interpolated cross-encoder);
    each variant switches one part off, and parts full does not use are reported as identical."""
    from eval.retrieval import full_stack_variants
    from pipeline.config import ConfigError

    sets = [f"run_dir={tmp_path}", f"rerank.model={tiny_cross_encoder_dir}", "rerank.retrieval_weight=0.4", "rewrite.mode=none", "retrieve.mode=hybrid"]
    config = load_config("tiny", sets)
    names = ["full", "full-no-rewrite", "full-base-embedder", "full-dense", "full-no-rerank"]
    assert full_stack_variants(config, names) == {"full": "hybrid+rerank", "full-no-rewrite": "hybrid+rerank", "full-base-embedder": "hybrid+rerank", "full-dense": "dense+rerank", "full-no-rerank": "hybrid"}
    assert full_stack_variants(load_config("tiny", [*sets, "rerank.enabled=false"]), ["full"]) == {"full": "hybrid"}
    # with the fine-tuned embedder inside full, every variant but full-base-embedder searches its vectors
    finetuned = load_config("tiny", [*sets, "index.finetuned_embedder=true"])
    assert full_stack_variants(finetuned, names) == {"full": "ft-hybrid+rerank", "full-no-rewrite": "ft-hybrid+rerank", "full-base-embedder": "hybrid+rerank", "full-dense": "ft-dense+rerank", "full-no-rerank": "ft-hybrid"}
    # with a rewriter, every variant but full-no-rewrite searches with its rewrites too
    rewriting = load_config("tiny", [*sets, "index.finetuned_embedder=true", "rewrite.mode=hyde"])
    assert full_stack_variants(rewriting, names) == {"full": "rw-ft-hybrid+rerank", "full-no-rewrite": "ft-hybrid+rerank", "full-base-embedder": "rw-hybrid+rerank", "full-dense": "rw-ft-dense+rerank", "full-no-rerank": "rw-ft-hybrid"}
    with pytest.raises(ConfigError, match="rewrite.mode=decompose.*hyde, multi or none"):
        full_stack_variants(load_config("tiny", [*sets, "rewrite.mode=decompose"]), ["full"])

    args = ["--data", str(demo_dir), "--split", "val", "--retrievers", "hybrid,full,full-dense,full-no-rerank,full-base-embedder", "--quiet", "--format", "json"]
    # the default profile searches the fine-tuned embedder's index and reranks with the
    # query-likelihood LM, neither trained here: the base index and the tiny cross-encoder
    assert main([*args, *(x for item in [*sets, "index.finetuned_embedder=false", "rerank.enabled=true", "rerank.kind=cross-encoder"] for x in ("--set", item))]) == 0
    result = json.loads(capsys.readouterr().out)
    retrievers = result["retrievers"]
    # without its reranker full is exactly the hybrid; the base-embedder variant is full itself
    assert retrievers["full-no-rerank"] == retrievers["hybrid"] and retrievers["full-base-embedder"] == retrievers["full"]
    assert result["full_stack"]["full-base-embedder"] == {"runs": "hybrid+rerank", "same_as_full": True}
    assert result["full_stack"]["full-dense"]["same_as_full"] is False
    tests = result["paired_vs_full"]
    assert set(tests) == {"full-dense", "full-no-rerank", "full-base-embedder"} and tests["full-base-embedder"]["diff"] == 0.0
    assert tests["full-no-rerank"]["diff"] == pytest.approx(retrievers["full"]["mrr@10"] - retrievers["hybrid"]["mrr@10"])
    assert result["settings"]["full"]["rerank.retrieval_weight"] == 0.4
    assert "full - full-no-rerank, MRR@10" in to_markdown(result)


def test_closed_book_scores_the_top1_answer(demo_dir, tmp_path, hash_embedding_cls):
    config = load_config("tiny", [f"run_dir={tmp_path}"])
    result = evaluate_closed_book(config, demo_dir, "val", ["dense", "bm25"], embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)
    assert result["protocol"] == "closed-book" and result["corpus_size"] == 221
    for name in ("dense", "bm25"):
        summary = result["retrievers"][name]
        assert 0.0 < summary["rougeL_top1"] < 1.0 and summary["answer_hit@1"] <= summary["answer_hit@5"]
        assert summary["n"] == 47
    assert "rougeL_top1" in to_markdown(result)


def test_tuning_picks_the_best_setting_on_cached_lists():
    from llama_index.core.schema import NodeWithScore, TextNode

    def hits(ids, scores):
        return [NodeWithScore(node=TextNode(id_=i, text=i), score=s) for i, s in zip(ids, scores)]

    # dense is right on q0 only; bm25 on q1 only and very confident there: weighting must help
    dense = [hits(["g0", "x", "y"], [0.9, 0.5, 0.4]), hits(["x", "y", "g1"], [0.9, 0.85, 0.8])]
    bm25 = [hits(["y", "g0"], [2.0, 1.9]), hits(["g1", "z"], [9.0, 1.0])]
    best, rows = tune_fusion(dense, bm25, [{"g0"}, {"g1"}], grid={"fusion": ["rrf", "score"], "rrf_k": [1.0, 60.0], "bm25_weight": [0.0, 1.0]})
    assert len(rows) == 2 * 2 + 2  # score fusion ignores k: scored once per weight
    assert best["mrr@10"] == 1.0 and rows[0] == best
    # among equally good settings the one closest to the defaults (rrf, k=60, weight 1) wins
    assert (best["fusion"], best["rrf_k"], best["bm25_weight"]) == ("rrf", 60.0, 1.0)
    dense_only = next(r for r in rows if (r["fusion"], r["rrf_k"], r["bm25_weight"]) == ("rrf", 60.0, 0.0))
    assert dense_only["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)  # without BM25, q1's answer is third
    assert all(r["mrr@10"] <= best["mrr@10"] for r in rows)
    assert {(r["fusion"], r["bm25_weight"]) for r in rows if r["bm25_weight"] == 0.0} == {("rrf", 0.0), ("score", 0.0)}


@pytest.fixture(scope="module")
def seed_open_book(seed_dir):
    """The open-book corpus of the seed data (1806 answers) in an in-memory knowledge base with
    the real MiniLM, plus batched query vectors of the test questions: built once for the module."""
    from pipeline.index import KnowledgeBase

    config = load_config("tiny")
    nodes, questions, relevant = open_book_corpus(seed_dir / "splits")
    kb = KnowledgeBase.from_nodes(config, nodes)
    vectors = {"test": query_embeddings(kb, config, questions["test"])}
    yield config, kb, questions, relevant, vectors
    kb.close()


@pytest.mark.realweights
def test_known_dense_and_bm25_figures_on_seed_open_book_test(seed_open_book):
    from pipeline.retrieve import build_retriever

    config, kb, questions, relevant, vectors = seed_open_book
    known = {"dense": {"recall@1": 0.643, "recall@5": 0.860, "mrr@10": 0.740}, "bm25": {"recall@1": 0.449, "recall@5": 0.717, "mrr@10": 0.554}}
    got = {}
    for mode in ("dense", "bm25"):
        hits, _ = run_retriever(build_retriever(config, mode, DEPTH, kb=kb), questions["test"], embeddings=vectors["test"], show_progress=False)
        got[mode] = _means(retrieval_per_query([[h.node.node_id for h in q] for q in hits], relevant["test"]))
        for metric, value in known[mode].items():
            # exact up to the order of the seed's 31 verbatim-repeated answers (tied vectors)
            assert got[mode][metric] == pytest.approx(value, abs=0.006), (mode, metric, got[mode][metric])
    # plain RRF (k=60, equal weights) of the two is worse than dense alone, as known
    plain_rrf = load_config("tiny", ["retrieve.fusion=rrf", "retrieve.rrf_k=60", "retrieve.dense_weight=1", "retrieve.bm25_weight=1", "retrieve.candidates=20"])
    hits, _ = run_retriever(build_retriever(plain_rrf, "hybrid", DEPTH, kb=kb), questions["test"], embeddings=vectors["test"], show_progress=False)
    plain = _means(retrieval_per_query([[h.node.node_id for h in q] for q in hits], relevant["test"]))
    assert plain["mrr@10"] < got["dense"]["mrr@10"] - 0.02 and plain["recall@1"] < got["dense"]["recall@1"]
    assert all(h.node.metadata["retriever"] == "hybrid" and "fusion_score" in h.node.metadata for h in hits[0])


@pytest.mark.realweights
def test_shipped_profile_fusion_is_not_worse_than_dense_on_seed_test(seed_open_book):
    """The tiny profile's retrieve section (tuned on val with --tune) on test: the hybrid ships
    as the default mode only because this holds."""
    from pipeline.retrieve import build_retriever

    _, kb, questions, relevant, vectors = seed_open_book
    shipped = load_config("tiny")
    ranked = {}
    for mode in ("dense", "hybrid"):
        hits, _ = run_retriever(build_retriever(shipped, mode, DEPTH, kb=kb), questions["test"], embeddings=vectors["test"], show_progress=False)
        ranked[mode] = _means(retrieval_per_query([[h.node.node_id for h in q] for q in hits], relevant["test"]))
    if shipped.retrieve.mode == "hybrid":
        assert ranked["hybrid"]["mrr@10"] >= ranked["dense"]["mrr@10"] - 1e-9
    else:
        assert shipped.retrieve.mode == "dense"


@pytest.mark.slow
@pytest.mark.realweights
def test_closed_book_dense_top1_reproduces_the_retrieval_only_baseline(seed_dir):
    """The seed README: answering with the answer of the most similar train pair (MiniLM) scores
    ROUGE-L 0.1975 on test."""
    result = evaluate_closed_book(load_config("tiny"), seed_dir / "splits", "test", ["dense"], show_progress=False, log=lambda *_: None)
    assert result["retrievers"]["dense"]["rougeL_top1"] == pytest.approx(0.1975, abs=0.001)


@pytest.mark.slow
@pytest.mark.realweights
def test_tuning_on_val_reproduces_the_shipped_settings(seed_dir):
    from eval.retrieval import evaluate_open_book

    result = evaluate_open_book(load_config("tiny"), seed_dir / "splits", "test", ["dense"], tune=True, show_progress=False, log=lambda *_: None)
    shipped = load_config("tiny").retrieve
    assert result["settings"]["hybrid-tuned"]["fusion"] == shipped.fusion
    assert result["settings"]["hybrid-tuned"]["bm25_weight"] == pytest.approx(shipped.bm25_weight / shipped.dense_weight)
    assert result["retrievers"]["hybrid-tuned"]["mrr@10"] >= result["retrievers"]["dense"]["mrr@10"]


def test_full_stack_with_a_rewriter_runs_its_rewrites(demo_dir, tmp_path, tiny_lm_dir, capsys):
    """rewrite.mode=hyde: full searches with the question plus the LM's hypothetical answer (the
    engine's QueryBundle), full-no-rewrite with the question alone, which is exactly plain dense."""
    sets = [f"run_dir={tmp_path}", f"generator.model={tiny_lm_dir}", "rewrite.mode=hyde", "rewrite.adapter=null", "rewrite.max_new_tokens=6", "retrieve.mode=dense", "rerank.enabled=false", "index.finetuned_embedder=false", "eval.bootstrap_samples=50"]
    assert main(["--data", str(demo_dir), "--split", "val", "--retrievers", "dense,full,full-no-rewrite", "--quiet", "--format", "json", *(x for item in sets for x in ("--set", item))]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["full_stack"]["full"] == {"runs": "rw-dense", "same_as_full": True}
    assert result["retrievers"]["full-no-rewrite"] == result["retrievers"]["dense"]
    assert result["rewrites"]["mode"] == "hyde" and len(result["rewrites"]["examples"]) == 5
    assert all(example["texts"] for example in result["rewrites"]["examples"])  # a hypothetical answer per question
    assert result["settings"]["full"]["rewrite.mode"] == "hyde"
    assert "full-no-rewrite" in result["paired_vs_full"]
