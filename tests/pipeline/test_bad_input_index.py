"""Bad input matrix of `python -m pipeline.index` / `pipeline.index.ingest`: a bad prepared split,
document source or setting ends in exit code 2 with a message naming the file (and line) and the
fix, before anything is written: no half-made index folder (no manifest at all), and an existing
index, even with --rebuild, stays complete and untouched. Unreadable document files are skipped
with a warning naming each (documented); text in any script, with emoji or Unicode line
separators, and a 100,000-character question are indexed and found again.

The embedder is the hashed bag-of-words `hash_embedding_cls` (the model is irrelevant here); CLI
runs call `main(argv)` in-process with `pipeline.encoders.load_embedder` patched to return it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.fileio import write_jsonl
from pipeline.index import ingest, main, open_index, qa_node_id, qa_text
from helpers import MULTILINGUAL, png_bytes, row

GOOD = [{"question": f"What is concept number {i}?", "answer": f"Concept {i} is a technique with property p{i}."} for i in range(10)]
GOOD_TEXT = "".join(json.dumps(r) + "\n" for r in GOOD)




def _overrides(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return [f"run_dir={tmp_path / 'run'}", f"data.dir={data_dir}", f"index.dir={tmp_path / 'index'}", *extra]


def _config(tmp_path: Path, data_dir: Path, *extra: str):
    return load_config("tiny", _overrides(tmp_path, data_dir, *extra))


def _cli(capsys, tmp_path: Path, data_dir: Path, *args: str) -> tuple[int, str, str]:
    argv = ["--quiet"]
    for override in _overrides(tmp_path, data_dir):
        argv += ["--set", override]
    code = main([*argv, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def fake_embedder(monkeypatch, hash_embedding_cls):
    """The CLI loads its embedder through pipeline.encoders.load_embedder: hand it the hashed one."""
    import pipeline.encoders

    embed = hash_embedding_cls()
    monkeypatch.setattr(pipeline.encoders, "load_embedder", lambda config, **kwargs: embed)
    return embed


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    write_jsonl(out / "train.jsonl", GOOD)
    write_jsonl(out / "val.jsonl", GOOD[:2])
    write_jsonl(out / "test.jsonl", GOOD[2:4])
    return out


def _manifest(tmp_path: Path) -> dict | None:
    path = tmp_path / "index" / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _snapshot(index_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(index_dir)): p.read_bytes() for p in sorted(index_dir.rglob("*")) if p.is_file() and not p.name.startswith(".ingest.lock")}


# --------------------------------------------------------------------------------------------
# bad prepared splits: exit 2, file:line, the fix, and no index written
# --------------------------------------------------------------------------------------------

# (case id, content of train.jsonl or None for no file, fragments; "{train}" is the file)
BAD_SPLITS = [
    ("empty-file", b"", ["{train}: no valid question/answer records"]),
    ("whitespace-only-file", b" \n\n\t\n", ["{train}: no valid question/answer records"]),
    ("empty-question", (GOOD_TEXT + row(question="", answer="x")).encode(), ["{train}:11: field 'question' is empty"]),
    ("question-is-number", (GOOD_TEXT + row(question=3.5, answer="x")).encode(), ["{train}:11: field 'question' must be a string, got float (3.5)"]),
    ("question-is-list", (GOOD_TEXT + row(question=["q"], answer="x")).encode(), ["{train}:11: field 'question' must be a string, got list"]),
    ("question-is-null", (GOOD_TEXT + row(question=None, answer="x")).encode(), ["{train}:11: missing field 'question'"]),
    ("malformed-json", (GOOD_TEXT + "{question: 'single quotes'}\n").encode(), ["{train}:11: bad JSON (Expecting property name enclosed in double quotes at column 2)"]),
    ("truncated-mid-line", (GOOD_TEXT + '{"question": "What is a tr').encode(), ["{train}:11: bad JSON (Unterminated string starting at column 14)"]),
    ("latin-1-file", (GOOD_TEXT + row(question="Qu'est-ce qu'un café ?", answer="x")).encode("latin-1"), ["{train}:11: not UTF-8 (byte 0xe9", "re-save the file as UTF-8"]),
    ("png-as-jsonl", png_bytes(), ["{train}: looks binary (NUL bytes), not .jsonl text"]),
    ("no-train-file", None, ["{train}: missing; prepare the data first: python -m pipeline.prepare --input RAW --out {data}"]),
]


@pytest.mark.parametrize(("content", "fragments"), [case[1:] for case in BAD_SPLITS], ids=[case[0] for case in BAD_SPLITS])
def test_bad_split_is_refused_before_anything_is_written(tmp_path, capsys, fake_embedder, content, fragments):
    data = tmp_path / "data"
    data.mkdir()
    train = data / "train.jsonl"
    if content is not None:
        train.write_bytes(content)
    code, _, err = _cli(capsys, tmp_path, data)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.format(train=train, data=data) in err, err
    if "line" in err or ":11:" in err:
        # --skip-invalid is prepare's flag, not this command's: the fix names prepare
        assert f"python -m pipeline.prepare --input RAW --out {data}" in err
    assert not (tmp_path / "index").exists(), "a failed ingestion must not create the index folder"
    assert fake_embedder.calls == 0


def test_data_dir_that_does_not_exist_is_refused(tmp_path, capsys, fake_embedder):
    code, _, err = _cli(capsys, tmp_path, tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere' / 'train.jsonl'}: missing; prepare the data first" in err
    assert not (tmp_path / "index").exists()


def test_bad_data_with_rebuild_keeps_the_existing_index(tmp_path, capsys, data_dir, fake_embedder):
    """--rebuild deletes the index: it must not do so before it knows the new inputs are usable."""
    assert _cli(capsys, tmp_path, data_dir)[0] == 0
    before = _snapshot(tmp_path / "index")
    assert _manifest(tmp_path)["state"] == "complete"
    (data_dir / "train.jsonl").write_bytes(GOOD_TEXT.encode() + b'{"question": "cut')
    code, _, err = _cli(capsys, tmp_path, data_dir, "--rebuild")
    assert code == 2 and f"{data_dir / 'train.jsonl'}:11: bad JSON" in err
    assert _snapshot(tmp_path / "index") == before
    config = _config(tmp_path, data_dir)
    assert open_index(config, embed_model=fake_embedder).counts() == {"chroma": 10, "bm25": 10, "nodes": 10}


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("index.bogus=1", "override index.bogus=1: unknown key 'index.bogus' in section 'index'; valid keys: dir, embed_model"),
        ("retrieve.top_k=abc", "override retrieve.top_k=abc: retrieve.top_k must be an integer; got 'abc'"),
        ("retrieve.top_k=-2", "override retrieve.top_k=-2: retrieve.top_k must be > 0; got -2"),
        ("index.chunk_size=0", "override index.chunk_size=0: index.chunk_size must be > 0; got 0"),
        ("index.sources=notes.md", "override index.sources=notes.md: index.sources must be a list (list of str); got 'notes.md'"),
    ],
    ids=["unknown-key", "wrong-type", "negative-top-k", "zero-chunk-size", "sources-not-a-list"],
)
def test_bad_setting_is_refused_naming_the_override(tmp_path, capsys, data_dir, fake_embedder, override, fragment):
    code, _, err = _cli(capsys, tmp_path, data_dir, "--set", override)
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "index").exists()


def test_missing_embed_model_is_refused_before_anything_is_written(tmp_path, capsys, data_dir):
    code, _, err = _cli(capsys, tmp_path, data_dir, "--set", "index.embed_model=/nonexistent/minilm")
    assert code == 2 and "Traceback" not in err
    assert "index.embed_model" in err and "/nonexistent/minilm" in err and "Fix:" in err
    assert _manifest(tmp_path) is None and not (tmp_path / "index").exists()


def test_missing_embed_model_with_rebuild_keeps_the_existing_index(tmp_path, capsys, data_dir, fake_embedder, monkeypatch):
    assert _cli(capsys, tmp_path, data_dir)[0] == 0
    before = _snapshot(tmp_path / "index")
    code, _, err = _cli(capsys, tmp_path, data_dir, "--rebuild", "--set", "index.embed_model=/nonexistent/minilm", "--set", "security.allow_any_model_path=true")
    assert code == 2 and "/nonexistent/minilm" in err and "not found" in err
    assert _snapshot(tmp_path / "index") == before and _manifest(tmp_path)["state"] == "complete"


# --------------------------------------------------------------------------------------------
# document sources: unreadable files are skipped and named; nothing readable is an error
# --------------------------------------------------------------------------------------------

GOOD_MD = "# Caching\n\nA CDN keeps copies of content near its users.\n"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("image.md", png_bytes(), "binary content (NUL bytes) in a text file"),
        ("image.txt", png_bytes(), "binary content (NUL bytes) in a text file"),
        ("image.html", png_bytes(), "binary content (NUL bytes) in a text file"),
        ("image.pdf", png_bytes(), "cannot read PDF"),
        ("latin1.txt", "Qu'est-ce qu'un café ?".encode("latin-1"), "not UTF-8 (byte 0xe9 at offset 19)"),
        ("empty.md", b"", "no text"),
        ("blank.txt", b"  \n\t\n", "no text"),
    ],
    ids=["png-as-md", "png-as-txt", "png-as-html", "png-as-pdf", "latin-1-txt", "empty-md", "whitespace-txt"],
)
def test_unreadable_document_is_skipped_with_a_warning_naming_it(tmp_path, capsys, data_dir, fake_embedder, name, content, reason):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text(GOOD_MD, encoding="utf-8")
    (docs / name).write_bytes(content)
    code, out, err = _cli(capsys, tmp_path, data_dir, "--source", str(docs))
    assert code == 0, err
    assert f"warning: skipped {docs / name}: {reason}" in err
    assert "11 documents (10 QA pairs, 1 files, 1 skipped)" in out
    nodes = open_index(_config(tmp_path, data_dir), embed_model=fake_embedder).nodes.values()
    assert {n.metadata.get("file_name") for n in nodes if n.metadata["kind"] == "document"} == {"good.md"}
    assert _manifest(tmp_path)["state"] == "complete"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda docs: None, "source folder {docs} holds no .md, .markdown, .txt, .pdf, .html, .htm files; nothing to ingest from it"),
        (lambda docs: ((docs / "a.md").write_bytes(png_bytes()), (docs / "b.txt").write_bytes(b"\xff\xfe\x00")), "no readable document in {docs} (2 skipped)"),
        (lambda docs: (docs / "data.csv").write_text("a,b\n"), "source folder {docs} holds no"),
    ],
    ids=["empty-folder", "only-unreadable-files", "only-unsupported-files"],
)
def test_source_folder_with_nothing_readable_is_refused(tmp_path, capsys, data_dir, fake_embedder, make, fragment):
    docs = tmp_path / "docs"
    docs.mkdir()
    make(docs)
    code, _, err = _cli(capsys, tmp_path, data_dir, "--source", str(docs))
    assert code == 2 and fragment.format(docs=docs) in err, err
    assert not (tmp_path / "index").exists()


def test_missing_or_unsupported_source_file_is_refused(tmp_path, capsys, data_dir, fake_embedder):
    code, _, err = _cli(capsys, tmp_path, data_dir, "--source", str(tmp_path / "missing.md"))
    assert code == 2 and f"source {tmp_path / 'missing.md'} does not exist; pass a file or folder of .md" in err
    png = tmp_path / "diagram.png"
    png.write_bytes(png_bytes())
    code, _, err = _cli(capsys, tmp_path, data_dir, "--source", str(png))
    assert code == 2 and f"source {png} has suffix '.png'; supported: .md" in err
    assert not (tmp_path / "index").exists()


# --------------------------------------------------------------------------------------------
# valid but unusual text: indexed whole and found again
# --------------------------------------------------------------------------------------------



def test_any_script_emoji_and_unicode_separators_are_indexed_and_found(tmp_path, hash_embedding_cls):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", MULTILINGUAL + GOOD)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Деревья 🌲\n\nB-дерево хранит ключи в узлах.\n\n## 索引\n\n索引加速查询。\n", encoding="utf-8")
    config = _config(tmp_path, data)
    embed = hash_embedding_cls()
    report = ingest(config, sources=[str(docs)], embed_model=embed, show_progress=False, log=lambda *_: None)
    assert (report.qa_pairs, report.files, report.skipped_files) == (len(MULTILINGUAL) + len(GOOD), 1, [])
    kb = open_index(config, embed_model=embed)
    for record in MULTILINGUAL:
        node = kb.get_node(qa_node_id(record["question"], record["answer"]))
        assert (node.metadata["question"], node.metadata["answer"]) == (record["question"], record["answer"])
    headings = {n.metadata.get("heading") for n in kb.nodes.values() if n.metadata["kind"] == "document"}
    assert "Деревья 🌲 / 索引" in headings

    from pipeline.retrieve import build_retriever

    # dense: the node's own text comes back first (the hashed vectors make the question alone a
    # noisy query); BM25: the question alone (it splits no CJK words, so those are left to dense)
    dense, bm25 = (build_retriever(config, mode, 1, embed_model=embed) for mode in ("dense", "bm25"))
    for record in MULTILINGUAL:
        assert dense.retrieve(qa_text(record["question"], record["answer"]))[0].node.metadata["question"] == record["question"]
    for record in MULTILINGUAL[1:]:
        assert bm25.retrieve(record["question"])[0].node.metadata.get("question") == record["question"], record["question"]
    again = ingest(config, sources=[str(docs)], embed_model=embed, show_progress=False, log=lambda *_: None)
    assert again.nodes_added == 0, "content-derived ids of non-ASCII text must be stable"


def test_a_100k_character_question_is_indexed_and_a_100k_query_is_cut_with_a_warning(tmp_path, hash_embedding_cls):
    long_question = "Why does the cache " + "really " * 14_300 + "miss?"
    assert len(long_question) > 100_000
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [*GOOD, {"question": long_question, "answer": "Because it is cold."}])
    config = _config(tmp_path, data)
    embed = hash_embedding_cls()
    ingest(config, embed_model=embed, show_progress=False, log=lambda *_: None)
    kb = open_index(config, embed_model=embed)
    node = kb.get_node(qa_node_id(long_question, "Because it is cold."))
    assert node.metadata["question"] == long_question and kb.counts()["nodes"] == 11

    from pipeline.retrieve import build_retriever

    retriever = build_retriever(config, "hybrid", 1, embed_model=embed)
    with pytest.warns(UserWarning, match=r"query of 100\d\d\d characters truncated to its first 2000 \(retrieve.max_query_chars\)"):
        top = retriever.retrieve(long_question)[0].node
    assert top.metadata["question"] == long_question
