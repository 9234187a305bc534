"""Readers query the engine from several threads while an ingestion adds documents to the same index.

One writer (`pipeline.index.ingest`, several rounds, each a new generation of the index), in a
background thread of the readers' process or in another process (the UI + `python -m
pipeline.index` case), and four reader threads sharing one `Components` (one KnowledgeBase,
retrievers, reranker): two ask `nn_answer` (dense top-1, the full `engine.query` path, no LM) and
two run the retrieval part of `full-no-rewrite` (hybrid + cross-encoder + grade). Readers reload
the stores when a round completes (KnowledgeBase.refresh_if_changed) while other readers are
mid-query. That a second writer is refused naming the holder is covered in detail by
tests/pipeline/test_index.py::test_second_writer_fails_at_once_naming_the_holder_and_readers_still_read;
here it is checked again while the writer is really busy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline import Components, build_query_engine
from pipeline.config import load_config
from pipeline.fileio import write_jsonl
from pipeline.index import IndexLockedError, ingest, open_index

CONCEPTS = ["hashing", "sorting", "caching", "routing", "parsing", "locking", "paging", "logging", "queueing", "sharding", "batching", "tracing"]
FIRST, STEP, ROUNDS = 120, 60, 5  # 120 pairs indexed before the readers start, then 5 rounds of 60
EMBED_DIM = 256  # the hash embedder's width: wide enough that nn_answer finds a pair by its own words
WRITER_SECONDS_MAX = 60.0  # a writer still running after this is a hang (readers stop then anyway)


def _records(n: int) -> list[dict[str, str]]:
    # a unique made-up word per pair ("zq00042") lets BM25 find exactly that pair later
    return [
        {
            "question": f"What does the zq{i:05d} variant of {CONCEPTS[i % len(CONCEPTS)]} change?",
            "answer": f"The zq{i:05d} variant of {CONCEPTS[i % len(CONCEPTS)]} trades {CONCEPTS[(i * 7) % len(CONCEPTS)]} for speed in case {i}.",
        }
        for i in range(n)
    ]


def _system(tmp_path: Path, embed: Any, ce_dir: Path):
    data = tmp_path / "data"
    records = _records(FIRST + STEP * ROUNDS)
    write_jsonl(data / "train.jsonl", records[:FIRST])
    overrides = [
        f"run_dir={tmp_path / 'run'}", f"data.dir={data}", f"index.dir={tmp_path / 'index'}", f"rerank.model={ce_dir}",
        "rerank.candidates=10", "agent.grade_threshold=0.0", "index.checkpoint_every=16",  # checkpoints: many partial writes mid-query
    ]  # fmt: skip
    config = load_config("tiny", overrides)
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    components = Components(config, kb=open_index(config, embed_model=embed))
    nn_answer = build_query_engine(config, "nn_answer", components=components)
    hybrid_rerank = build_query_engine(config, "full-no-rewrite", components=components)
    nn_answer.query(records[0]["question"])  # loads the stores and the reranker before the readers start
    hybrid_rerank.retrieve_only(records[0]["question"])
    return config, overrides, records, components, nn_answer, hybrid_rerank


def _read_while(write: Callable[[], None], components, nn_answer, hybrid_rerank, records, top_n: int, *, meanwhile: Callable[[], None] = lambda: None):
    """Four reader threads query until `write` (run in its own thread) has returned and one more
    second has passed; returns (failures, answers, (start, end) of the writing)."""
    stop = threading.Event()
    failures: list[str] = []
    answers: list[tuple[int, list[str], float, int]] = []  # (reader, source node ids, start time, generation seen)
    window: dict[str, float] = {}
    lock = threading.Lock()

    def writer() -> None:
        window["start"] = time.perf_counter()
        try:
            write()
        except Exception:
            failures.append("writer:\n" + traceback.format_exc())
        finally:
            window["end"] = time.perf_counter()

    def reader(i: int) -> None:
        k = i
        while not stop.is_set():
            question = records[(k * 37) % len(records)]["question"]  # also pairs not yet ingested
            k += 4
            started = time.perf_counter()
            try:
                if i % 2 == 0:
                    response = nn_answer.query(question)
                    ids = [n.node.node_id for n in response.source_nodes]
                    assert len(ids) == 1 and response.response == response.source_nodes[0].node.metadata["answer"]
                else:
                    result = hybrid_rerank.retrieve_only(question)
                    ids = [n.node.node_id for n in result["nodes"]]
                    assert 1 <= len(ids) <= top_n and len(set(ids)) == len(ids)
                generation = int(components.kb.manifest["generation"])
            except Exception:
                with lock:
                    failures.append(f"reader {i} ({question!r}):\n" + traceback.format_exc())
                continue
            with lock:
                answers.append((i, ids, started, generation))

    readers = [threading.Thread(target=reader, args=(i,), name=f"reader-{i}", daemon=True) for i in range(4)]
    for thread in readers:
        thread.start()
    writing = threading.Thread(target=writer, name="writer", daemon=True)
    writing.start()
    try:
        meanwhile()
        writing.join(timeout=WRITER_SECONDS_MAX)
        time.sleep(1.0)  # readers keep going a moment after the last round: they must have reloaded
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=30)
    assert not writing.is_alive() and not any(t.is_alive() for t in readers), "a thread hung"
    return failures, answers, (window["start"], window["end"])


def _check(config, embed, components, nn_answer, records, failures, answers, window) -> None:
    assert not failures, f"{len(failures)} failure(s); the first:\n" + "\n".join(failures[:2])
    # queries really ran during the ingestion, from every reader, across several generations
    during = [a for a in answers if window[0] <= a[2] <= window[1]]
    assert {a[0] for a in during} == {0, 1, 2, 3} and len(during) >= 20, (len(during), len(answers))
    assert len({a[3] for a in answers}) >= 3, "readers must have reloaded mid-reading"

    # every source node any reader got exists in the final index, in Chroma and in the node store
    final = open_index(config, embed_model=embed)
    chroma_ids = set(final.vector_store._collection.get(include=[])["ids"])
    assert len(chroma_ids) == len(final.nodes) == len(records) == final.counts()["bm25"]
    returned = {node_id for _, ids, _, _ in answers for node_id in ids}
    assert returned and returned <= chroma_ids and returned <= set(final.nodes)

    # the readers' shared knowledge base reloaded: it sees every round, and the last round's pairs
    # are found through it (BM25 by their unique word, and the engine's own answer)
    assert components.kb.counts() == {"chroma": len(records), "bm25": len(records), "nodes": len(records)}
    bm25 = components.retriever("bm25", 1)
    for record in records[-STEP:][::6]:
        assert bm25.retrieve(record["question"])[0].node.metadata["question"] == record["question"]
        assert nn_answer.query(record["question"]).response == record["answer"]


def _slow(hash_embedding_cls):
    class SlowEmbedding(hash_embedding_cls):
        """The hash embedder at a few ms per text, so every round overlaps many queries."""

        def _get_text_embedding(self, text: str) -> list[float]:
            time.sleep(0.004)
            return super()._get_text_embedding(text)

    return SlowEmbedding(dim=EMBED_DIM)


def test_readers_query_safely_while_an_ingestion_thread_adds_documents(tmp_path, hash_embedding_cls, tiny_cross_encoder_dir):
    embed = _slow(hash_embedding_cls)
    config, _, records, components, nn_answer, hybrid_rerank = _system(tmp_path, embed, tiny_cross_encoder_dir)
    data = Path(config.data.dir)

    def write() -> None:
        for r in range(1, ROUNDS + 1):
            write_jsonl(data / "train.jsonl", records[: FIRST + STEP * r])
            ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)

    def second_writer() -> None:
        # while the first writer really writes, a second one is refused at once, told who holds the lock
        deadline = time.monotonic() + 10
        while not (Path(config.index.dir) / ".ingest.lock.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.perf_counter()
        with pytest.raises(IndexLockedError) as refused:
            ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
        assert time.perf_counter() - started < 5
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(refused.value) and "readers are not blocked" in str(refused.value)

    failures, answers, window = _read_while(write, components, nn_answer, hybrid_rerank, records, config.rerank.top_n, meanwhile=second_writer)
    _check(config, embed, components, nn_answer, records, failures, answers, window)


WRITER = r"""
import hashlib, json, re, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import pipeline
from llama_index.core.base.embeddings.base import BaseEmbedding
from pipeline.config import load_config
from pipeline.fileio import write_jsonl
from pipeline.index import ingest

class HashEmbedding(BaseEmbedding):  # the same vectors as the hash_embedding_cls fixture
    dim: int = {dim}

    def _get_text_embedding(self, text):
        time.sleep(0.004)
        vec = np.zeros(self.dim)
        for word in re.findall(r"\w+", text.lower()):
            vec[int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % self.dim] += 1.0
        norm = np.linalg.norm(vec)
        return (vec / norm if norm else vec + 1.0 / np.sqrt(self.dim)).tolist()

    _get_query_embedding = _get_text_embedding

    async def _aget_query_embedding(self, query):
        return self._get_text_embedding(query)

config = load_config("tiny", {overrides!r})
records = json.loads(sys.stdin.read())
embed = HashEmbedding()
for r in range(1, {rounds} + 1):
    write_jsonl({data!r} + "/train.jsonl", records[: {first} + {step} * r])
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
"""


def test_readers_query_safely_while_another_process_ingests(tmp_path, hash_embedding_cls, tiny_cross_encoder_dir, repo_root):
    """The deployment of the design: a reader process (the UI) with many threads, and
    `python -m pipeline.index` in another process. Each new generation makes the readers drop
    Chroma's cached system to see the new vectors, while other readers are searching it."""
    import json

    embed = _slow(hash_embedding_cls)
    config, overrides, records, components, nn_answer, hybrid_rerank = _system(tmp_path, embed, tiny_cross_encoder_dir)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(repo_root), dim=EMBED_DIM, overrides=overrides, rounds=ROUNDS, first=FIRST, step=STEP, data=config.data.dir), encoding="utf-8")

    def write() -> None:
        done = subprocess.run([sys.executable, str(script)], input=json.dumps(records), capture_output=True, text=True, timeout=WRITER_SECONDS_MAX, env={**os.environ, "TQDM_DISABLE": "1"})
        assert done.returncode == 0, done.stderr[-3000:]

    failures, answers, window = _read_while(write, components, nn_answer, hybrid_rerank, records, config.rerank.top_n)
    _check(config, embed, components, nn_answer, records, failures, answers, window)
