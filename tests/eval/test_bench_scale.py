"""`python -m eval.bench scale`: the synthetic corpus, the client loop, and tiny end-to-end runs
(hash embedder + random-weight cross-encoder; the real stores, a real `chroma run` server)."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from pathlib import Path

import pytest

from eval.bench_scale import CONCEPTS, QUESTION_TEMPLATES, main, run_benchmark, run_clients, synthetic_queries, synthetic_records, to_markdown
from pipeline.config import load_config
from helpers import process_alive



def _work_folder(logged: list[str]) -> Path:
    found = [re.search(r"work folder (\S+)$", line) for line in logged]
    paths = [m.group(1) for m in found if m]
    assert len(paths) == 1, logged
    return Path(paths[0])


def _config(tmp_path: Path, ce_dir: Path, *extra: str):
    return load_config("tiny", [f"run_dir={tmp_path / 'run'}", f"rerank.model={ce_dir}", *extra])


# ------------------------------------------------------------------ corpus


def test_synthetic_corpus_is_deterministic_distinct_and_varied():
    records = synthetic_records(3000, seed=7)
    assert records == synthetic_records(3000, seed=7)
    assert synthetic_records(1000, seed=7) == records[:1000], "a smaller corpus is a prefix of a larger one"
    assert synthetic_records(100, seed=8) != records[:100]
    assert len({(r["question"], r["answer"]) for r in records}) == 3000
    text = " ".join(r["question"] + " " + r["answer"] for r in records)
    assert sum(concept in text for concept in CONCEPTS) >= 0.95 * len(CONCEPTS)
    assert len(set(re.findall(r"[a-z]+", text.lower()))) > 400, "BM25 needs a varied vocabulary"

    queries = synthetic_queries(500, seed=7)
    assert queries == synthetic_queries(500, seed=7) and len(set(queries)) == 500
    assert not {r["question"] for r in records} & set(queries), "queries are worded unlike the passages"
    # each query names a concept of the corpus, so it has relevant passages to find
    assert all(any(c in q for c in CONCEPTS) for q in queries)
    question_shapes = [re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t))) for t in QUESTION_TEMPLATES]
    assert not [q for q in queries if any(shape.fullmatch(q) for shape in question_shapes)]


# ------------------------------------------------------------------ the client loop


def test_clients_count_exceptions_and_empty_results_as_errors_and_stop_on_time():
    seen: list[str] = []
    lock = threading.Lock()

    def query(question: str):
        with lock:
            seen.append(question)
        time.sleep(0.01)
        if question.endswith("3"):
            raise ValueError(f"bad {question}")
        return [] if question.endswith("5") else [question]

    queries = [f"q{i}" for i in range(10)]
    started = time.perf_counter()
    row = run_clients(query, queries, clients=3, seconds=0.5)
    assert time.perf_counter() - started < 2.0
    assert row["clients"] == 3 and 0.5 <= row["seconds"] < 2.0
    bad = sum(q.endswith(("3", "5")) for q in seen)
    assert row["errors"] == bad > 0 and row["queries"] == len(seen) - bad > 0
    assert any(e.startswith("ValueError: bad q3") for e in row["error_examples"])
    assert any(e.startswith("RuntimeError: no passage returned for 'q5'") for e in row["error_examples"])
    assert len(row["error_examples"]) <= 5
    assert row["p95_ms"] >= row["p50_ms"] >= 10.0 and row["queries_per_s"] == pytest.approx(row["queries"] / row["seconds"], rel=0.01)
    assert row["peak_rss_mib"] > 0 and row["server_peak_rss_mib"] is None
    # three clients ask different questions at the same time: the first three are q0, q1, q2
    assert sorted(seen[:3]) == ["q0", "q1", "q2"]


# ------------------------------------------------------------------ end to end, tiny


def test_tiny_run_measures_both_stores_at_every_level(tmp_path, hash_embedding_cls, tiny_cross_encoder_dir, monkeypatch):
    from pipeline.chroma_server import ChromaServer

    servers: list[tuple[ChromaServer, int]] = []
    original_start = ChromaServer.start

    def recording_start(self):
        started = original_start(self)
        servers.append((self, self.pid))
        return started

    monkeypatch.setattr(ChromaServer, "start", recording_start)
    embed = hash_embedding_cls()
    logged: list[str] = []
    result = run_benchmark(
        _config(tmp_path, tiny_cross_encoder_dir),
        passages=300, seconds=1.0, clients=(1, 2), queries=40, embed_model=embed, show_progress=False, log=logged.append,
    )  # fmt: skip
    work = _work_folder(logged)
    rows = {(r["store"], r["clients"]): r for r in result["rows"]}
    assert set(rows) == {("embedded", 1), ("embedded", 2), ("server", 1), ("server", 2)}
    for row in rows.values():
        assert row["errors"] == 0 and row["error_examples"] == []
        assert row["queries"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
        assert row["peak_rss_mib"] > 100
    if importlib.util.find_spec("psutil"):  # without it only this process's memory is measured
        assert rows[("server", 1)]["server_peak_rss_mib"] > 10
    assert rows[("embedded", 1)]["server_peak_rss_mib"] is None
    assert result["errors"] == 0
    # embedded once, for the first store; the server's ingestion got the same vectors back
    assert result["ingestion"]["embedded"] == {**result["ingestion"]["embedded"], "nodes": 300, "added": 300, "embedded": 300, "vectors_reused": 0}
    assert result["ingestion"]["server"]["nodes"] == 300 and result["ingestion"]["server"]["embedded"] == 0
    assert result["ingestion"]["server"]["vectors_reused"] == 300
    assert embed.calls == 300
    # the server was stopped and the work folder removed
    assert len(servers) == 1 and servers[0][0].process is None and not process_alive(servers[0][1])
    assert not work.exists()

    table = to_markdown(result)
    assert "| store | clients | queries | q/s | p50 ms | p95 ms | errors | peak RSS MiB |" in table
    for store, clients in rows:
        assert re.search(rf"^\| {store} \| {clients} \| {rows[(store, clients)]['queries']} \|", table, re.M)
    assert "ERRORS" not in table


def test_a_failure_after_the_server_started_stops_it_and_cleans_up(tmp_path, hash_embedding_cls, tiny_cross_encoder_dir, monkeypatch):
    import pipeline.index
    from pipeline.chroma_server import ChromaServer

    pids: list[int] = []
    original_start = ChromaServer.start

    def recording_start(self):
        started = original_start(self)
        pids.append(self.pid)
        return started

    def failing_ingest(config, **kwargs):
        raise RuntimeError(f"disk full while ingesting into {config.index.chroma_host}")

    monkeypatch.setattr(ChromaServer, "start", recording_start)
    monkeypatch.setattr(pipeline.index, "ingest", failing_ingest)
    logged: list[str] = []
    with pytest.raises(RuntimeError, match="disk full while ingesting into 127.0.0.1"):
        run_benchmark(_config(tmp_path, tiny_cross_encoder_dir), passages=50, seconds=1.0, clients=(1,), stores=("server",), queries=5, embed_model=hash_embedding_cls(), show_progress=False, log=logged.append)
    assert len(pids) == 1 and not process_alive(pids[0]), "the server is stopped (and reaped) before the error propagates"
    assert not _work_folder(logged).exists()

    # a work folder the caller names is never deleted, also on errors
    mine = tmp_path / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="disk full"):
        run_benchmark(_config(tmp_path, tiny_cross_encoder_dir), passages=50, seconds=1.0, clients=(1,), stores=("server",), queries=5, work_dir=mine, embed_model=hash_embedding_cls(), show_progress=False, log=logged.append)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "data" / "train.jsonl").is_file()


# ------------------------------------------------------------------ command line


def test_cli_help_lists_every_flag_and_bad_values_fail_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--passages", "--seconds", "--clients", "--stores", "--queries", "--json", "--work-dir", "--config", "--set"):
        assert flag in out
    for argv, message in (
        (["--clients", "1,x"], "--clients must be positive integers separated by commas, e.g. 1,4,8; got '1,x'"),
        (["--clients", "0"], "--clients must be positive integers"),
        (["--seconds", "0"], "--seconds must be > 0; got 0"),
        (["--passages", "-5"], "--passages must be > 0; got -5"),
        (["--stores", "embedded,cloud", "--passages", "10"], "--stores must list embedded and/or server; got embedded,cloud"),
    ):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_dispatcher_lists_and_runs_scale(capsys):
    from eval.bench import available, main as bench_main

    assert available()["scale"] == "eval.bench_scale"
    assert bench_main(["--list"]) == 0
    assert re.search(r"^\s+scale\s+Scale benchmark: ~100k passages", capsys.readouterr().out, re.M)
    assert bench_main(["scale", "--seconds", "-1"]) == 2


@pytest.mark.realweights
def test_cli_run_with_minilm_writes_the_table_and_json(tmp_path, tiny_cross_encoder_dir, capsys):
    out = tmp_path / "bench" / "scale.json"
    code = main(["--passages", "60", "--seconds", "1", "--clients", "1,2", "--stores", "embedded", "--queries", "20", "--quiet", "--json", str(out), "--set", f"run_dir={tmp_path / 'run'}", "--set", f"rerank.model={tiny_cross_encoder_dir}"])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert result["settings"]["embedder"] == "sentence-transformers/all-MiniLM-L6-v2" and result["settings"]["passages"] == 60
    assert [(r["store"], r["clients"]) for r in result["rows"]] == [("embedded", 1), ("embedded", 2)]
    assert all(r["errors"] == 0 and r["queries"] > 0 for r in result["rows"])
    assert (out.parent / "ragft_config.yaml").is_file()
    assert "| embedded | 1 |" in printed and "| embedded | 2 |" in printed
