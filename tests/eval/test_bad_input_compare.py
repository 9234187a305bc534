"""Bad input matrix of `python -m eval.compare`: a prepared data folder with a bad split, an empty
or missing folder, and every bad setting or model path ends in exit code 2 with a message naming
the file (and line) and the fix, before any system runs: no predictions/<system>.done.json, no
metrics.json, and the user's data folder is never overwritten. Questions in any script, with
emoji or Unicode line separators, and a 100,000-character question run end to end, twice (the
second run reuses the first), and damaged leftovers of an earlier run are run again, not trusted.

Runs call `main(argv)` in-process with the `nn_answer` system (no language model) and
`pipeline.encoders.load_embedder` patched to the hashed `hash_embedding_cls`, so nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import compare as cmp
from pipeline.fileio import write_jsonl
from helpers import png_bytes, row

RECORDS = [{"question": f"What is concept number {i}?", "answer": f"Concept {i} is a technique with property p{i}."} for i in range(12)]




@pytest.fixture()
def fake_embedder(monkeypatch, hash_embedding_cls):
    """Every embedder load (ingestion, retrieval) gets the hashed one: the model is irrelevant here."""
    import pipeline.encoders

    embed = hash_embedding_cls()
    monkeypatch.setattr(pipeline.encoders, "load_embedder", lambda config, **kwargs: embed)
    return embed


def _data(folder: Path, train=RECORDS[:8], val=RECORDS[8:10], test=RECORDS[10:]) -> Path:
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "val.jsonl", val)
    write_jsonl(folder / "test.jsonl", test)
    return folder


def _run(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    argv = ["--set", f"run_dir={tmp_path / 'run'}", "--set", "eval.bertscore=false", "--set", "eval.bootstrap_samples=20", "--out", str(tmp_path / "out"), "--no-progress", "--systems", "nn_answer", *args]
    code = cmp.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_no_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert not [p for p in left if p.endswith(".done.json") or p in ("metrics.json", "report.md")], left


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------
# a bad prepared data folder
# --------------------------------------------------------------------------------------------

GOOD_TEST = "".join(row(**r) for r in RECORDS[10:])

# (case id, split, content, fragments; "{file}" is the bad split file)
BAD_SPLITS = [
    ("empty-test", "test", b"", ["{file}: no valid question/answer records"]),
    ("whitespace-only-test", "test", b"\n \n", ["{file}: no valid question/answer records"]),
    ("empty-question", "test", (GOOD_TEST + row(question="", answer="a")).encode(), ["{file}:3: field 'question' is empty"]),
    ("question-is-number", "test", (GOOD_TEST + row(question=12, answer="a")).encode(), ["{file}:3: field 'question' must be a string, got int (12)"]),
    ("question-is-null", "val", (GOOD_TEST + row(question=None, answer="a")).encode(), ["{file}:3: missing field 'question'"]),
    ("malformed-json", "test", (GOOD_TEST + "{oops}\n").encode(), ["{file}:3: bad JSON (Expecting property name enclosed in double quotes at column 2)"]),
    ("truncated-mid-line", "train", (GOOD_TEST + '{"question": "What is a tr').encode(), ["{file}:3: bad JSON (Unterminated string starting at column 14)"]),
    ("latin-1", "test", (GOOD_TEST + row(question="Qu'est-ce qu'un café ?", answer="a")).encode("latin-1"), ["{file}:3: not UTF-8 (byte 0xe9", "re-save the file as UTF-8"]),
    ("png-as-jsonl", "test", png_bytes(), ["{file}: looks binary (NUL bytes), not .jsonl text"]),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(("split", "content", "fragments"), [case[1:] for case in BAD_SPLITS], ids=[case[0] for case in BAD_SPLITS])
def test_bad_split_is_refused_and_the_data_folder_is_left_as_it_was(tmp_path, capsys, fake_embedder, split, content, fragments, dry_run):
    """Before: a split that failed to load was "prepared again" from the profile's raw file, which
    overwrote the user's train/val/test.jsonl with the demo data and evaluated that instead."""
    data = _data(tmp_path / "mydata")
    bad = data / f"{split}.jsonl"
    bad.write_bytes(content)
    before = _snapshot(data)
    code, stdout, err = _run(capsys, tmp_path, "--data", str(data), *(["--dry-run"] if dry_run else []))
    assert code == 2 and err.startswith("error: the prepared data is not usable: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.format(file=bad) in err, err
    assert f"prepare the splits again: python -m pipeline.prepare --input RAW --out {data}" in err
    assert _snapshot(data) == before, "the user's data must never be overwritten"
    assert "prepared from data.input" not in stdout
    _assert_no_results(tmp_path)
    assert fake_embedder.calls == 0


@pytest.mark.parametrize("make", [lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", lambda tmp: tmp / "nowhere"], ids=["empty-folder", "missing-folder"])
def test_data_folder_without_splits_is_refused_not_filled_with_the_demo_data(tmp_path, capsys, fake_embedder, make):
    data = make(tmp_path)
    code, stdout, err = _run(capsys, tmp_path, "--data", str(data), "--dry-run")
    assert code == 2, stdout
    assert f"the prepared data is not usable: {data / 'train.jsonl'}, {data / 'val.jsonl'}, {data / 'test.jsonl'} missing" in err
    assert "Pass --data DIR with train/val/test.jsonl, or set data.input to a raw file so it can be prepared" in err
    assert not data.exists() or not any(data.iterdir())
    _assert_no_results(tmp_path)


def test_data_folder_without_splits_is_prepared_from_a_named_raw_file(tmp_path, capsys, fake_embedder):
    """The documented way: --set data.input=RAW prepares the missing splits into --data DIR."""
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(row(**r) for r in RECORDS), encoding="utf-8")
    data = tmp_path / "empty"
    data.mkdir()
    code, stdout, err = _run(capsys, tmp_path, "--data", str(data), "--set", f"data.input={raw}", "--dry-run")
    assert code == 0, err
    assert f"it will be prepared from data.input={raw}" in stdout


# --------------------------------------------------------------------------------------------
# settings and model paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "eval.bogus=1"], "override eval.bogus=1: unknown key 'eval.bogus' in section 'eval'; valid keys: split, systems"),
        (["--set", "retrieve.top_k=abc"], "override retrieve.top_k=abc: retrieve.top_k must be an integer; got 'abc'"),
        (["--set", "retrieve.top_k=-1"], "override retrieve.top_k=-1: retrieve.top_k must be > 0; got -1"),
        (["--set", "eval.chunk_size=0"], "override eval.chunk_size=0: eval.chunk_size must be > 0; got 0"),
        (["--limit", "-1"], "--limit must be > 0; got -1"),
        (["--limit", "0"], "--limit must be > 0; got 0"),
        (["--systems", "nn_answer,nope"], "unknown system 'nope'; choose one of: vanilla, rag_vanilla"),
        (["--systems", "nn_answer,nn_answer"], "--systems names nn_answer more than once"),
    ],
    ids=["unknown-key", "wrong-type", "negative-top-k", "zero-chunk-size", "negative-limit", "zero-limit", "unknown-system", "duplicate-system"],
)
def test_bad_setting_is_refused(tmp_path, capsys, fake_embedder, args, fragment):
    data = _data(tmp_path / "mydata")
    code, _, err = _run(capsys, tmp_path, "--data", str(data), *args)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    _assert_no_results(tmp_path)


def test_unknown_split_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _run(capsys, tmp_path, "--split", "dev")
    assert info.value.code == 2 and "invalid choice: 'dev' (choose from 'train', 'val', 'test')" in capsys.readouterr().err


def test_missing_embed_model_is_refused_without_predictions_or_index(tmp_path, capsys):
    data = _data(tmp_path / "mydata")
    code, _, err = _run(capsys, tmp_path, "--data", str(data), "--set", "index.embed_model=/nonexistent/minilm")
    assert code == 2 and "index.embed_model" in err and "/nonexistent/minilm" in err and "Fix:" in err, err
    _assert_no_results(tmp_path)
    assert not list((tmp_path / "run").rglob("manifest.json")), "no half-made index"


def test_missing_base_model_is_refused_by_the_plan(tmp_path, capsys):
    data = _data(tmp_path / "mydata")
    code, _, err = _run(capsys, tmp_path, "--data", str(data), "--systems", "vanilla", "--set", "generator.model=/nonexistent/lm", "--dry-run")
    assert code == 2 and "generator.model='/nonexistent/lm'" in err and "Fix:" in err, err
    _assert_no_results(tmp_path)


# --------------------------------------------------------------------------------------------
# valid but unusual questions, and damaged leftovers of an earlier run
# --------------------------------------------------------------------------------------------

LONG_QUESTION = "Why does the cache " + "really " * 14_300 + "miss?"
UNUSUAL_QUESTIONS = [
    {"question": "什么是 B 树？", "answer": "B 树是一种自平衡的搜索树。"},
    {"question": "Что такое хеш-таблица?", "answer": "Структура данных для быстрого поиска по ключу."},
    {"question": "キャッシュとは何ですか 🚀?", "answer": "データの一時保存です 💾。"},
    {"question": "Line\u2028separator and next\u0085line?", "answer": "Kept\u2028as\x0bis\u0085here."},
    {"question": LONG_QUESTION, "answer": "Because it is cold."},
]


def test_any_script_emoji_separators_and_a_100k_question_run_end_to_end_and_are_reused(tmp_path, capsys, fake_embedder, monkeypatch):
    """Open-book: the test questions are in the knowledge base, so nn_answer finds each one's own
    answer. Before, the second run crashed with a JSONDecodeError: the predictions file was split
    at U+2028 (str.splitlines) when it was read back."""
    data = _data(tmp_path / "mydata", train=RECORDS[:8] + UNUSUAL_QUESTIONS, test=UNUSUAL_QUESTIONS)
    args = ["--data", str(data), "--set", "data.knowledge_splits=[train]"]
    with pytest.warns(UserWarning, match=r"query of 100\d\d\d characters truncated to its first 2000"):
        code, stdout, err = _run(capsys, tmp_path, *args)
    assert code == 0, err
    predictions = tmp_path / "out" / "predictions" / "nn_answer.jsonl"
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").split("\n") if line]
    assert [r["question"] for r in rows] == [r["question"] for r in UNUSUAL_QUESTIONS]
    # the dense top-1 of a question is its own pair for the hashed embedder except in CJK, whose
    # characters it does not split into words: only the exact texts are checked there
    for r, record in zip(rows, UNUSUAL_QUESTIONS):
        assert r["reference"] == record["answer"]
        if record["question"] != "什么是 B 树？":
            assert r["prediction"] == record["answer"], record["question"][:40]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["systems"]["nn_answer"]["status"] == "run" and metrics["systems"]["nn_answer"]["n"] == len(UNUSUAL_QUESTIONS)

    from pipeline.engine import RagftQueryEngine

    monkeypatch.setattr(RagftQueryEngine, "query_batch", lambda *a, **k: pytest.fail("a finished system ran again"))
    code, _, err = _run(capsys, tmp_path, *args)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))["systems"]["nn_answer"]["status"] == "reused"

    # a predictions file cut mid-line (its done marker still there) is not trusted: it is written
    # again from the generation cache (no question is asked again), not read as a JSONDecodeError
    whole = predictions.read_bytes()
    predictions.write_bytes(whole[: len(whole) - 40])
    code, _, err = _run(capsys, tmp_path, *args)
    assert code == 0 and "Traceback" not in err, err
    assert predictions.read_bytes() == whole
    assert json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))["systems"]["nn_answer"]["status"] == "resumed"


def test_cache_torn_inside_a_multibyte_character_loads_the_whole_lines(tmp_path):
    cache = cmp.GenerationCache(tmp_path / "c.jsonl")
    cache.append([{"question": "什么是 B 树？", "x": 1}, {"question": "Line\u2028separator?", "x": 2}])
    line = json.dumps({"question": "キャッシュ 🚀", "row": {"question": "キャッシュ 🚀"}}, ensure_ascii=False).encode("utf-8")
    with open(cache.path, "ab") as handle:
        handle.write(line[: line.index("🚀".encode()) + 2])  # killed in the middle of the emoji's 4 bytes
    assert set(cache.load()) == {"什么是 B 树？", "Line\u2028separator?"}
    cache.append([{"question": "after", "x": 3}])
    assert set(cache.load()) == {"什么是 B 树？", "Line\u2028separator?", "after"}
