"""Ingestion: idempotence, changed files, interrupted runs, the writer lock, bad input, Chroma server,
and documents reaching every index the systems search (the fine-tuned embedder's too).

Every claim is proved by counting what Chroma, BM25 and the node store hold. The embedder is the
hashed bag-of-words `hash_embedding_cls` (the model is irrelevant to these properties and it makes
the tests fast); the CLI test uses the real MiniLM weights on a few pairs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.chroma_server import ChromaServer, chroma_executable, free_port
from pipeline.config import load_config, read_resolved_config
from pipeline.fileio import write_jsonl
from pipeline.index import (
    INDEX_FORMAT,
    IndexLockedError,
    KnowledgeBaseError,
    SourceError,
    WriterLock,
    finetuned_embedder_config,
    ingest,
    ingest_all_indexes,
    ingest_finetuned_index,
    main,
    open_index,
    qa_node_id,
    read_manifest,
)

MARKDOWN = """# Networking

Intro about networks.

## TCP

TCP gives reliable ordered delivery with retransmission and congestion control.

## UDP

UDP sends datagrams without handshakes; it suits DNS and streaming.
"""

HTML = """<html><head><style>p {color: red}</style><script>alert('x')</script></head>
<body><h1>Caching</h1><p>A CDN caches content near users.</p><h2>Eviction</h2><p>LRU evicts the least recently used entry.</p></body></html>"""


def _config(tmp_path: Path, data_dir: Path, *extra: str):
    return load_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.dir={data_dir}", f"index.dir={tmp_path / 'index'}", *extra])


def _records(n: int, offset: int = 0) -> list[dict[str, str]]:
    topics = ["hashing", "sorting", "caching", "routing", "parsing", "locking", "paging", "logging", "queueing", "sharding"]
    return [
        {"question": f"What is {topics[i % len(topics)]} number {i}?", "answer": f"{topics[i % len(topics)].capitalize()} {i} is a technique with property p{i} and trade-off t{i}."}
        for i in range(offset, offset + n)
    ]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    write_jsonl(out / "train.jsonl", _records(40))
    write_jsonl(out / "val.jsonl", _records(5, offset=100))
    write_jsonl(out / "test.jsonl", _records(5, offset=200))
    return out


@pytest.fixture()
def docs_dir(tmp_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "docs"
    out.mkdir()
    (out / "net.md").write_text(MARKDOWN, encoding="utf-8")
    (out / "notes.txt").write_text("Kubernetes schedules pods onto nodes. " * 3, encoding="utf-8")
    (out / "cache.html").write_text(HTML, encoding="utf-8")
    figure = plt.figure()
    figure.text(0.1, 0.5, "Kerberos tickets authenticate users")
    figure.savefig(out / "auth.pdf")
    plt.close(figure)
    (out / "image.txt").write_bytes(b"\x89PNG\x00\x00\x01binary")  # binary with a text suffix
    (out / "ignored.bin").write_bytes(b"not a document type")
    return out


def _counts(config, embed):
    kb = open_index(config, embed_model=embed)
    return kb.counts()


def test_qa_ingestion_is_idempotent(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    first = ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert (first.documents, first.nodes_added, first.nodes_total) == (40, 40, 40)
    assert embed.calls == 40
    assert _counts(config, embed) == {"chroma": 40, "bm25": 40, "nodes": 40}

    again = ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert (again.nodes_added, again.nodes_unchanged, again.nodes_removed) == (0, 40, 0)
    assert embed.calls == 40, "an unchanged knowledge base must not be embedded again"
    assert not again.bm25_rebuilt
    assert _counts(config, embed) == {"chroma": 40, "bm25": 40, "nodes": 40}

    kb = open_index(config, embed_model=embed)
    record = _records(40)[3]
    node = kb.get_node(qa_node_id(record["question"], record["answer"]))
    assert node.get_content() == f"Question: {record['question']}\nAnswer: {record['answer']}"
    assert {k: node.metadata[k] for k in ("question", "answer", "split")} == {**record, "split": "train"}
    assert node.metadata["source"].endswith("train.jsonl")
    # metadata never leaks into what is embedded or prompted: the text already holds it
    from llama_index.core.schema import MetadataMode

    assert node.get_content(MetadataMode.EMBED) == node.get_content(MetadataMode.LLM) == node.get_content()

    manifest = json.loads((Path(config.index.dir) / "manifest.json").read_text())
    assert manifest["format"] == INDEX_FORMAT and manifest["state"] == "complete"
    assert manifest["embed_model"] == config.index.embed_model and manifest["embed_dim"] == 64
    resolved, facts = read_resolved_config(config.index.dir)
    assert resolved.index.dir == config.index.dir and facts["state"] == "complete"


def test_knowledge_splits_change_adds_and_removes(tmp_path, data_dir, hash_embedding_cls):
    embed = hash_embedding_cls()
    ingest(_config(tmp_path, data_dir), embed_model=embed, show_progress=False, log=lambda *_: None)
    both = _config(tmp_path, data_dir, "data.knowledge_splits=[train, val]")
    report = ingest(both, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert (report.nodes_added, report.nodes_unchanged, report.nodes_removed) == (5, 40, 0)
    assert _counts(both, embed) == {"chroma": 45, "bm25": 45, "nodes": 45}
    back = ingest(_config(tmp_path, data_dir), embed_model=embed, show_progress=False, log=lambda *_: None)
    assert (back.nodes_added, back.nodes_removed, back.nodes_total) == (0, 5, 40)
    assert _counts(both, embed) == {"chroma": 40, "bm25": 40, "nodes": 40}


def test_documents_structure_skips_and_changed_file(tmp_path, data_dir, docs_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir, "index.chunk_size=64", "index.chunk_overlap=8")
    embed = hash_embedding_cls()
    warned: list[str] = []
    report = ingest(config, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    assert report.files == 4 and report.skipped_files == [str(docs_dir / "image.txt")]
    assert any("image.txt" in w and "binary" in w for w in warned)
    kb = open_index(config, embed_model=embed)
    nodes = list(kb.nodes.values())
    docs = [n for n in nodes if n.metadata["kind"] == "document"]
    assert kb.counts() == {"chroma": len(nodes), "bm25": len(nodes), "nodes": len(nodes)} and len(nodes) == 40 + len(docs)
    headings = {n.metadata["heading"] for n in docs if n.metadata["file_name"] == "net.md"}
    assert {"Networking / TCP", "Networking / UDP"} <= headings
    html_text = " ".join(n.text for n in docs if n.metadata["file_name"] == "cache.html")
    assert "LRU evicts" in html_text and "alert" not in html_text and "color" not in html_text
    assert "Caching / Eviction" in {n.metadata["heading"] for n in docs if n.metadata["file_name"] == "cache.html"}
    assert any("Kerberos" in n.text for n in docs if n.metadata["file_name"] == "auth.pdf")
    tcp = next(n for n in docs if "reliable ordered" in n.text)
    assert tcp.metadata["source"] == str((docs_dir / "net.md").resolve())
    from llama_index.core.schema import MetadataMode

    # metadata enters neither its embedding nor the prompt (index.embed_headings: off by default)
    assert tcp.get_content(metadata_mode=MetadataMode.EMBED) == tcp.get_content(metadata_mode=MetadataMode.LLM) == tcp.text

    # change one file: only its nodes are re-embedded; the old ones are gone from every store
    old_txt = [n.node_id for n in docs if n.metadata["file_name"] == "notes.txt"]
    (docs_dir / "notes.txt").write_text("Kubernetes runs containers in pods; the scheduler places them.", encoding="utf-8")
    calls = embed.calls
    changed = ingest(config, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    new_txt = [n for n in open_index(config, embed_model=embed).nodes.values() if n.metadata.get("file_name") == "notes.txt"]
    assert embed.calls - calls == len(new_txt) == changed.nodes_added == 1
    assert changed.nodes_removed == len(old_txt) and changed.docs_changed == 1
    assert changed.nodes_unchanged == len(nodes) - len(old_txt)
    kb = open_index(config, embed_model=embed)
    assert kb.counts() == {k: len(nodes) - len(old_txt) + 1 for k in ("chroma", "bm25", "nodes")}
    assert not set(old_txt) & set(kb.nodes)
    assert kb.vector_store._collection.get(ids=old_txt)["ids"] == []

    # the same files again: nothing to do
    calls = embed.calls
    same = ingest(config, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    assert same.nodes_added == same.nodes_removed == 0 and embed.calls == calls

    # the same files with other chunk settings: every document is split again, nothing is left of the old chunks
    before = set(open_index(config, embed_model=embed).nodes)
    finer = _config(tmp_path, data_dir, "index.chunk_size=32", "index.chunk_overlap=4")
    calls = embed.calls
    rechunked = ingest(finer, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    kb = open_index(finer, embed_model=embed)
    assert rechunked.docs_changed == rechunked.documents and rechunked.nodes_removed == len(before)
    assert embed.calls - calls == rechunked.nodes_added == rechunked.nodes_total == len(kb.nodes)
    assert kb.counts() == {k: len(kb.nodes) for k in ("chroma", "bm25", "nodes")}
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["chunking"] == [32, 4]
    again = ingest(finer, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    assert again.nodes_added == again.nodes_removed == 0

    # headings into the embedded text: the same chunks (ids) re-embedded, BM25 rebuilt over the new text, never prompted
    headed = _config(tmp_path, data_dir, "index.chunk_size=32", "index.chunk_overlap=4", "index.embed_headings=true")
    with_headings = ingest(headed, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    assert with_headings.docs_changed == with_headings.documents and with_headings.bm25_rebuilt
    headed_nodes = open_index(headed, embed_model=embed).nodes
    assert set(headed_nodes) == set(kb.nodes)
    tcp = next(n for n in headed_nodes.values() if "reliable ordered" in n.text)
    assert tcp.get_content(metadata_mode=MetadataMode.EMBED).startswith("heading: Networking / TCP") and tcp.get_content(metadata_mode=MetadataMode.LLM) == tcp.text
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["chunking"] == [32, 4, "headings"]

    # an index from before the manifest recorded its chunking (so before embed_headings): the config it saved tells
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["chunking"]
    manifest_path.write_text(json.dumps(manifest))
    assert ingest(finer, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append).nodes_added == 0
    manifest = json.loads(manifest_path.read_text())
    del manifest["chunking"]
    manifest_path.write_text(json.dumps(manifest))
    back = ingest(config, sources=[str(docs_dir)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=warned.append)
    assert back.docs_changed == back.documents and json.loads(manifest_path.read_text())["chunking"] == [64, 8]


KILLER = r"""
import os, sys
sys.path.insert(0, {root!r})
import pipeline
import pipeline.encoders
import pipeline.index as ix
import pipeline.index.ingestion as ingestion  # patched where ingest looks the names up
from pipeline.config import load_config
from llama_index.core.embeddings import MockEmbedding

POINT, ARG = {point!r}, {arg!r}

def die():
    os.kill(os.getpid(), 9)   # like a killed process: no cleanup, no finally, no atexit

class Embedder(MockEmbedding):
    seen: int = 0
    def _get_text_embeddings(self, texts):
        self.seen += len(texts)
        if POINT == "embedding" and self.seen > ARG:
            die()
        return super()._get_text_embeddings(texts)

if POINT == "docstore":  # vectors of a checkpoint are in Chroma, its docstore is not written yet
    real_persist, calls = ingestion._persist_docstore, []
    def persist(store, path):
        calls.append(path)
        if len(calls) == ARG:
            die()
        real_persist(store, path)
    ingestion._persist_docstore = persist
elif POINT == "bm25":  # the BM25 folder is written under its temporary name, not yet swapped in
    real_replace = os.replace
    def replace(src, dst):
        if os.path.basename(str(dst)) == ix.BM25_DIRNAME:
            die()
        real_replace(src, dst)
    os.replace = replace  # pipeline.index.bm25 swaps the folder in with os.replace
elif POINT == "manifest":  # everything is written but the manifest still says "ingesting"
    real_write = ingestion._write_manifest
    def write(index_dir, manifest):
        if manifest.get("state") == "complete":
            die()
        real_write(index_dir, manifest)
    ingestion._write_manifest = write

config = load_config("tiny", {overrides!r})
ix.ingest(config, embed_model=Embedder(embed_dim=64), show_progress=False)
"""

LARGE = 300  # records; 6 checkpoints of 50


@pytest.mark.parametrize(
    "point,arg",
    [("embedding", 20), ("embedding", 170), ("docstore", 5), ("bm25", None), ("manifest", None)],
    ids=["first-checkpoint", "mid-ingestion", "chroma-written-docstore-not", "bm25-swap", "final-manifest"],
)
def test_killed_run_is_completed_without_duplicates(tmp_path, repo_root, hash_embedding_cls, point, arg):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", _records(LARGE))
    write_jsonl(data / "val.jsonl", _records(5, offset=1000))
    write_jsonl(data / "test.jsonl", _records(5, offset=2000))
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.dir={data}", f"index.dir={tmp_path / 'index'}", "index.checkpoint_every=50"]
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(repo_root), point=point, arg=arg, overrides=overrides), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    config = load_config("tiny", overrides)
    index_dir = Path(config.index.dir)
    assert json.loads((index_dir / "manifest.json").read_text())["state"] == "ingesting"
    with pytest.warns(UserWarning, match="interrupted; re-run python -m pipeline.index"):
        open_index(config, embed_model=hash_embedding_cls()).manifest  # readers are told it is not complete
    # the lock died with its holder: the next writer is not blocked, and finishes the job
    embed = hash_embedding_cls()
    report = ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert report.nodes_total == LARGE and report.nodes_added + report.nodes_unchanged == LARGE
    assert embed.calls == report.nodes_added, "finished checkpoints must not be embedded again"
    if point == "embedding":
        assert report.nodes_unchanged == 50 * (arg // 50)
    kb = open_index(config, embed_model=embed)
    assert kb.counts() == {"chroma": LARGE, "bm25": LARGE, "nodes": LARGE}  # what a clean run holds
    ids = kb.vector_store._collection.get()["ids"]
    assert len(ids) == len(set(ids)) == LARGE
    assert len({row["node_id"] for row in kb.bm25.corpus}) == LARGE
    assert not [p.name for p in index_dir.iterdir() if p.name.endswith((".tmp", ".old"))], "a killed writer's debris must be cleaned"
    assert json.loads((index_dir / "manifest.json").read_text())["state"] == "complete"


def test_second_writer_fails_at_once_naming_the_holder_and_readers_still_read(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    with WriterLock(config.index.dir):
        started = time.perf_counter()
        with pytest.raises(IndexLockedError) as info:
            ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
        assert time.perf_counter() - started < 5
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "started 20" in message
        from pipeline.retrieve import build_retriever

        hits = build_retriever(config, "hybrid", 3, embed_model=embed).retrieve("What is sorting number 1?")
        assert hits and hits[0].node.metadata["question"] == "What is sorting number 1?"
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)  # released: works again


def test_bad_sources_fail_clearly(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"empty.*holds no"):
        ingest(config, sources=[str(empty)], embed_model=embed, show_progress=False, log=lambda *_: None)
    with pytest.raises(SourceError, match="does not exist"):
        ingest(config, sources=[str(tmp_path / "missing")], embed_model=embed, show_progress=False, log=lambda *_: None)
    only_binary = tmp_path / "binary"
    only_binary.mkdir()
    (only_binary / "a.md").write_bytes(b"\x00\x01\x02")
    with pytest.raises(SourceError, match="no readable document"):
        ingest(config, sources=[str(only_binary)], embed_model=embed, show_progress=False, log=lambda *_: None, warn=lambda m: None)
    no_qa = _config(tmp_path, data_dir, "data.knowledge_splits=[]")
    with pytest.raises(SourceError, match="nothing to ingest"):
        ingest(no_qa, embed_model=embed, show_progress=False, log=lambda *_: None)


def test_damaged_incompatible_or_foreign_index_fails_naming_dir_and_rebuild(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    manifest = Path(config.index.dir) / "manifest.json"
    good = manifest.read_text()

    manifest.write_text("{not json")
    for action in (lambda: open_index(config, embed_model=embed), lambda: ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)):
        with pytest.raises(KnowledgeBaseError) as info:
            action()
        assert config.index.dir in str(info.value) and "--rebuild" in str(info.value)

    manifest.write_text(json.dumps({**json.loads(good), "format": "ragft-index/0"}))
    with pytest.raises(KnowledgeBaseError, match=r"format 'ragft-index/0'.*--rebuild"):
        open_index(config, embed_model=embed)

    manifest.unlink()
    with pytest.raises(KnowledgeBaseError, match=r"no manifest.json.*--rebuild"):
        open_index(config, embed_model=embed)

    manifest.write_text(good)
    (Path(config.index.dir) / "nodes.json").write_text("[truncated")
    with pytest.raises(KnowledgeBaseError, match=r"damaged.*--rebuild"):
        ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    with pytest.raises(KnowledgeBaseError, match=r"nodes.json is damaged.*--rebuild"):
        open_index(config, embed_model=embed).nodes

    other = _config(tmp_path, data_dir, "index.embed_model=BAAI/bge-small-en-v1.5")
    with pytest.raises(KnowledgeBaseError, match=r"built with embedder 'sentence-transformers/all-MiniLM-L6-v2'.*bge-small.*--rebuild"):
        open_index(other, embed_model=embed)

    report = ingest(other, rebuild=True, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert report.nodes_added == 40 and open_index(other, embed_model=embed).counts()["chroma"] == 40

    with pytest.raises(KnowledgeBaseError, match="no index at"):
        open_index(_config(tmp_path / "elsewhere", data_dir), embed_model=embed)


def test_stale_bm25_is_rebuilt_from_the_node_store(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    bm25_dir = Path(config.index.dir) / "bm25"
    shutil.rmtree(bm25_dir)
    kb = open_index(config, embed_model=embed)  # a reader: rebuilds in memory, never writes
    assert kb.counts()["bm25"] == 40 and not bm25_dir.exists()
    report = ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    assert report.bm25_rebuilt and report.nodes_added == 0 and bm25_dir.is_dir()


def test_reader_reloads_after_an_ingestion(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir)
    embed = hash_embedding_cls()
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    from pipeline.retrieve import build_retriever

    kb = open_index(config, embed_model=embed)
    bm25 = build_retriever(config, "bm25", 1, kb=kb)
    assert bm25.retrieve("What is hashing number 100?")[0].node.metadata["split"] == "train"
    time.sleep(0.01)
    ingest(_config(tmp_path, data_dir, "data.knowledge_splits=[train, val]"), embed_model=embed, show_progress=False, log=lambda *_: None)
    top = bm25.retrieve("What is hashing number 100?")[0].node
    assert top.metadata["split"] == "val" and kb.size == 45


def _overrides(config, extra):
    keep = ("run_dir", "data.dir", "index.dir", "index.chroma_host", "index.chroma_port")
    values = {"run_dir": config.run_dir, "data.dir": config.data.dir, "index.dir": config.index.dir, "index.chroma_host": config.index.chroma_host, "index.chroma_port": config.index.chroma_port}
    return [f"{k}={json.dumps(values[k])}" for k in keep if values[k] is not None] + list(extra)


def _assert_same_ranking(a, b):
    """Same scores position by position, and the same nodes at each score; nodes with exactly
    tied scores may come in any order (hashed bag-of-words vectors tie now and then), and the
    group tied at the cut-off may be cut differently."""
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    groups_a, groups_b = {}, {}
    for hits, groups in ((a, groups_a), (b, groups_b)):
        for h in hits:
            groups.setdefault(round(h.score, 4), set()).add(h.node.node_id)
    last = round(a[-1].score, 4) if a else None
    assert {k: v for k, v in groups_a.items() if k != last} == {k: v for k, v in groups_b.items() if k != last}


def test_chroma_server_returns_what_the_embedded_store_returns(tmp_path, demo_dir, hash_embedding_cls):
    if chroma_executable() is None:
        pytest.skip("the chroma CLI is not installed")
    with ChromaServer(tmp_path / "server-data") as server:
        port = server.port
        embed = hash_embedding_cls()
        embedded = _config(tmp_path / "a", demo_dir)  # real, varied text: few exact ties
        served = _config(tmp_path / "b", demo_dir, "index.chroma_host=127.0.0.1", f"index.chroma_port={port}")
        n = ingest(embedded, embed_model=embed, show_progress=False, log=lambda *_: None).nodes_total
        ingest(served, embed_model=embed, show_progress=False, log=lambda *_: None)
        assert not (Path(served.index.dir) / "chroma").exists(), "server mode keeps no local Chroma data"
        assert open_index(served, embed_model=embed).counts() == {"chroma": n, "bm25": n, "nodes": n}
        again = ingest(served, embed_model=embed, show_progress=False, log=lambda *_: None)
        assert again.nodes_added == 0

        from pipeline.retrieve import build_retriever

        from pipeline.data import load_split

        for question in [r["question"] for r in load_split(demo_dir, "test")[:8]]:
            # the stores are compared directly; the hybrid is the same pure function of these two
            # lists, and comparing it would compare the order of exactly tied hashed vectors deep
            # in the candidate lists, which Chroma leaves arbitrary
            for mode, overrides in (("dense", []), ("bm25", [])):
                a = build_retriever(load_config("tiny", _overrides(embedded, overrides)), mode, 5, embed_model=embed).retrieve(question)
                b = build_retriever(load_config("tiny", _overrides(served, overrides)), mode, 5, embed_model=embed).retrieve(question)
                _assert_same_ranking(a, b)


def test_unreachable_server_is_a_clear_error(tmp_path, data_dir, hash_embedding_cls):
    config = _config(tmp_path, data_dir, "index.chroma_host=127.0.0.1", f"index.chroma_port={free_port()}")
    with pytest.raises(KnowledgeBaseError, match=r"cannot reach the Chroma server.*chroma run"):
        ingest(config, embed_model=hash_embedding_cls(), show_progress=False, log=lambda *_: None)


def test_cli_help_and_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--source", "--rebuild", "--quiet", "--config", "--set"):
        assert flag in out
    assert main(["--set", "data.dir=/nonexistent/data", "--quiet"]) == 2
    assert "prepare the data first" in capsys.readouterr().err


@pytest.mark.realweights
def test_cli_with_minilm(tmp_path, capsys):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", _records(12))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "net.md").write_text(MARKDOWN, encoding="utf-8")
    args = ["--set", f"run_dir={tmp_path}", "--set", f"data.dir={data}", "--set", f"index.dir={tmp_path / 'index'}", "--source", str(docs), "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "13 documents (12 QA pairs, 1 files)" in first and "removed" in first
    assert main(args) == 0
    assert "0 added" in capsys.readouterr().out
    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={data}", f"index.dir={tmp_path / 'index'}"])
    manifest = json.loads((Path(config.index.dir) / "manifest.json").read_text())
    assert manifest["embed_dim"] == 384 and manifest["embed_class"] == "HuggingFaceEmbedding"
    from pipeline.retrieve import build_retriever

    hit = build_retriever(config, "dense", 1).retrieve("Which protocol retransmits lost packets?")[0]
    assert hit.node.metadata["heading"] == "Networking / TCP"


READER = r"""
import json, sys
sys.path.insert(0, {root!r})
import pipeline
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import QueryBundle
from pipeline.config import load_config
from pipeline.index import open_index
from pipeline.retrieve import build_retriever

config = load_config("tiny", {overrides!r})
retriever = build_retriever(config, "dense", 1, embed_model=MockEmbedding(embed_dim=64))
for line in sys.stdin:
    hit = retriever.retrieve(QueryBundle(query_str="q", embedding=json.loads(line)))[0]
    print(json.dumps([hit.node.metadata["question"], retriever.kb.size]), flush=True)
"""


def test_a_reader_process_sees_what_another_process_ingested(tmp_path, data_dir, repo_root, hash_embedding_cls):
    """Chroma keeps its HNSW graph in memory per process; the reader must reload it when the
    manifest's generation moves on, or it would search the old graph."""
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.dir={data_dir}", f"index.dir={tmp_path / 'index'}"]
    embed = hash_embedding_cls()
    ingest(load_config("tiny", overrides), embed_model=embed, show_progress=False, log=lambda *_: None)
    script = tmp_path / "reader.py"
    script.write_text(READER.format(root=str(repo_root), overrides=overrides), encoding="utf-8")
    reader = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        question = _records(1, offset=100)[0]["question"]  # a val question, not yet in the index
        vector = json.dumps(embed.get_query_embedding(question))
        reader.stdin.write(vector + "\n")
        reader.stdin.flush()
        before, size_before = json.loads(reader.stdout.readline())
        assert before != question and size_before == 40
        time.sleep(0.01)
        ingest(load_config("tiny", [*overrides, "data.knowledge_splits=[train, val]"]), embed_model=embed, show_progress=False, log=lambda *_: None)
        reader.stdin.write(vector + "\n")
        reader.stdin.flush()
        after, size_after = json.loads(reader.stdout.readline())
        assert (after, size_after) == (question, 45)
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)


# --------------------------------------------------------------------------------------------
# every index the systems search: index.dir, and index.finetuned_dir (the fine-tuned embedder's,
# which `full` searches) when index.finetuned_embedder is on
# --------------------------------------------------------------------------------------------


def _finetuned_settings(tmp_path: Path, data: Path, embedder: Path | str) -> tuple[list[str], list[str]]:
    """(CLI flags, overrides) of a tiny config whose `full` searches the fine-tuned embedder's index."""
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"data.dir={data}",
        f"index.dir={tmp_path / 'index'}",
        f"index.finetuned_dir={tmp_path / 'index-finetuned'}",
        "index.finetuned_embedder=true",
        f"finetune.embedder.output={embedder}",
    ]
    return ["--config", "tiny", *(arg for override in overrides for arg in ("--set", override))], overrides


def _trained_embedder(path: Path) -> Path:
    """What marks a trained fine-tuned embedder (its config.json); the weights come from `embedders`."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    return path


@pytest.fixture()
def embedders(monkeypatch, hash_embedding_cls) -> dict:
    """One hashed embedder per index (by index.embed_model), handed to the CLI through
    pipeline.encoders.load_embedder; each counts what it embedded."""
    import pipeline.models

    made: dict = {}
    monkeypatch.setattr(pipeline.encoders, "load_embedder", lambda config, **kwargs: made.setdefault(config.index.embed_model, hash_embedding_cls()))
    return made


def _document_nodes(config, embedders) -> dict[str, str]:
    """node id -> text of the document chunks of `config`'s index, after checking that Chroma,
    BM25 and the node store hold the same nodes."""
    kb = open_index(config, embed_model=embedders[config.index.embed_model])
    assert set(kb.vector_store._collection.get()["ids"]) == set(kb.nodes) and len(kb.bm25.corpus) == len(kb.nodes)
    return {node_id: node.text for node_id, node in kb.nodes.items() if node.metadata["kind"] == "document"}


@pytest.mark.realweights
def test_a_document_added_on_the_command_line_is_found_by_fulls_retriever(tmp_path, capsys):
    """`python -m pipeline.index --source net.md` with index.finetuned_embedder on: the document
    reaches the fine-tuned embedder's index too, and `full`'s retriever, which searches that index,
    returns its chunk."""
    from pipeline import Components
    from pipeline.models import resolve_model
    from pipeline.systems import get_system, uses_finetuned_embedder

    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", _records(12))
    # a copy of the bundled MiniLM stands in for the trained embedder (any sentence-transformer folder will do)
    embedder = shutil.copytree(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), tmp_path / "run" / "finetuned-embedder")
    flags, overrides = _finetuned_settings(tmp_path, data, embedder)
    config = load_config("tiny", overrides)
    ingest_all_indexes(config, show_progress=False, log=lambda *_: None)  # both indexes built, as eval.compare leaves them
    assert read_manifest(config.index.finetuned_dir)["counts"]["nodes"] == 12
    doc = tmp_path / "net.md"
    doc.write_text(MARKDOWN, encoding="utf-8")

    assert main([*flags, "--source", str(doc), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" -> ", 1)[1] for line in lines] == [config.index.dir, config.index.finetuned_dir]
    assert all("13 documents (12 QA pairs, 1 files)" in line and "0 removed" in line for line in lines)
    spec = get_system("full", config)
    assert uses_finetuned_embedder(config, spec)
    components = Components(config)
    assert components.kb_for(True).index_dir == Path(config.index.finetuned_dir)  # the knowledge base full's retriever searches
    hit = components.retriever(spec.retrieve, 3, finetuned=True).retrieve("Which protocol retransmits lost packets?")[0]
    assert (hit.node.metadata["file_name"], hit.node.metadata["heading"]) == ("net.md", "Networking / TCP")


def test_changed_and_removed_documents_are_mirrored_in_the_finetuned_index(tmp_path, data_dir, embedders, capsys):
    embedder = _trained_embedder(tmp_path / "finetuned-embedder")
    flags, overrides = _finetuned_settings(tmp_path, data_dir, embedder)
    config = load_config("tiny", overrides)
    finetuned = finetuned_embedder_config(config)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "net.md").write_text(MARKDOWN, encoding="utf-8")
    (docs / "notes.txt").write_text("Kubernetes schedules pods onto nodes.", encoding="utf-8")
    assert main([*flags, "--source", str(docs), "--quiet"]) == 0
    first = _document_nodes(finetuned, embedders)
    assert first == _document_nodes(config, embedders) and any("Kubernetes schedules" in text for text in first.values())
    assert embedders[str(embedder)].calls == 40 + len(first), "the fine-tuned index is embedded by its own embedder"

    # one file changed, one removed, one added: re-embedded, dropped, embedded in both indexes
    (docs / "notes.txt").write_text("Kubernetes runs containers in pods; the scheduler places them.", encoding="utf-8")
    (docs / "net.md").unlink()
    (docs / "queues.md").write_text("# Queues\n\nA message queue decouples producers from consumers.", encoding="utf-8")
    capsys.readouterr()
    assert main([*flags, "--source", str(docs), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # in each index: the new notes.txt and queues.md added; net.md's chunks and the old notes.txt removed
    assert len(lines) == 2 and all(f"nodes: 2 added, 40 unchanged, {len(first)} removed" in line for line in lines)
    second = _document_nodes(finetuned, embedders)
    assert second == _document_nodes(config, embedders)
    texts = " ".join(second.values())
    assert "the scheduler places them" in texts and "message queue" in texts
    assert "schedules pods onto nodes" not in texts and "TCP" not in texts
    assert not set(first) & set(second)

    # a source no longer named: its documents leave both indexes, the QA pairs stay
    assert main([*flags, "--quiet"]) == 0
    assert _document_nodes(finetuned, embedders) == _document_nodes(config, embedders) == {}
    assert read_manifest(finetuned.index.dir)["counts"]["nodes"] == 40


def test_rerunning_adds_nothing_to_either_index(tmp_path, data_dir, embedders, capsys):
    flags, overrides = _finetuned_settings(tmp_path, data_dir, _trained_embedder(tmp_path / "finetuned-embedder"))
    config = load_config("tiny", overrides)
    doc = tmp_path / "net.md"
    doc.write_text(MARKDOWN, encoding="utf-8")
    args = [*flags, "--source", str(doc), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    calls = {name: embed.calls for name, embed in embedders.items()}
    generations = [read_manifest(d)["generation"] for d in (config.index.dir, config.index.finetuned_dir)]

    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("0 added" in line and "0 removed" in line and "BM25 up to date" in line for line in lines)
    assert {name: embed.calls for name, embed in embedders.items()} == calls, "nothing is embedded again"
    assert [read_manifest(d)["generation"] for d in (config.index.dir, config.index.finetuned_dir)] == generations


def test_before_the_embedder_is_trained_the_output_says_so_and_its_index_gets_the_documents_when_built(tmp_path, data_dir, embedders, capsys):
    """No fine-tuned embedder yet: only index.dir is written, the output says so, and the build of
    the fine-tuned index (eval.compare's, ingest_finetuned_index) ingests what index.dir holds."""
    embedder = tmp_path / "finetuned-embedder"
    flags, overrides = _finetuned_settings(tmp_path, data_dir, embedder)
    config = load_config("tiny", overrides)
    doc = tmp_path / "net.md"
    doc.write_text(MARKDOWN, encoding="utf-8")
    assert main([*flags, "--source", str(doc), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"the fine-tuned embedder {embedder} does not exist yet" in out and "eval.compare ingests these documents" in out
    assert read_manifest(config.index.finetuned_dir) is None
    assert read_manifest(config.index.dir)["sources"] == [str(doc.resolve())]

    _trained_embedder(embedder)
    report = ingest_finetuned_index(config, show_progress=False, log=lambda *_: None)
    assert report.files == 1
    assert _document_nodes(finetuned_embedder_config(config), embedders) == _document_nodes(config, embedders) != {}


def test_the_finetuned_index_has_its_own_collection_on_a_chroma_server(tmp_path):
    served = load_config("tiny", [f"run_dir={tmp_path}", "index.chroma_host=127.0.0.1"])
    assert finetuned_embedder_config(served, check=False).index.collection == f"{served.index.collection}-finetuned"
    embedded = load_config("tiny", [f"run_dir={tmp_path}"])
    assert finetuned_embedder_config(embedded, check=False).index.collection == embedded.index.collection  # its own folder already
