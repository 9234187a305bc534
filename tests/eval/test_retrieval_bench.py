"""The benchmark dispatcher and a miniature retrieval benchmark (hashed embedder: the numbers are
not the point here, the measurement path is)."""

from __future__ import annotations

import pytest

from eval import bench
from eval.bench_retrieval import build_corpus, run_benchmark, to_markdown
from pipeline.config import load_config
from pipeline.data import load_split


def test_dispatcher_lists_runs_and_rejects(capsys):
    assert bench.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "retrieval" in listing and "Retrieval benchmark" in listing
    assert bench.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        bench.main(["retrieval", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--sizes", "--queries", "--ingest-limit", "--embed-all", "--out"))
    assert bench.main(["retrieval", "--sizes", "2k", "--quiet"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_synthetic_corpus_recombines_seed_sentences(demo_dir):
    records = [r for s in ("train", "val", "test") for r in load_split(demo_dir, s)]
    corpus = build_corpus(records, 600, seed=1)
    assert len(corpus) == 600 and corpus[: len(records)] == [{**r, "sentences": None} for r in records]
    synthetic = corpus[len(records) :]
    all_sentences = {s for r in records for s in __import__("re").split(r"(?<=[.!?])\s+", r["answer"])}
    assert all(2 <= len(r["sentences"]) <= 3 and set(r["sentences"]) <= all_sentences for r in synthetic)
    assert len({(r["question"], r["answer"]) for r in corpus}) == 600
    assert build_corpus(records, 600, seed=1) == corpus  # seeded


def test_miniature_benchmark(demo_dir, tmp_path, hash_embedding_cls):
    config = load_config("tiny", [f"run_dir={tmp_path}"])
    result = run_benchmark(config, data_dir=demo_dir, sizes=[40, 330], queries=3, ingest_limit=20, embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)
    small, large = result["sizes"]
    assert (small["synthetic"], large["synthetic"]) == (0, 330 - 317)
    for row in result["sizes"]:
        assert row["ingestion"]["nodes"] == 20 and row["ingestion"]["rerun_added"] == 0 and row["ingestion"]["nodes_per_s"] > 0
        for name in ("dense", "bm25", "hybrid", "reference_flat_ip", "llamaindex_vectorstoreindex"):
            for table in ("latency", "search_latency"):
                lat = row[table][name]
                assert lat["n"] == 3 and 0 < lat["p50_ms"] <= lat["p95_ms"]
        assert row["latency"]["hybrid"]["p50_vs_reference"] > 0 and row["peak_rss_mb"] > 0
    table = to_markdown(result)
    assert "| 330 (13) | hybrid |" in table and "nodes/s" in table
