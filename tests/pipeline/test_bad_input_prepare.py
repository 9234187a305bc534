"""Bad input matrix of `python -m pipeline.prepare`: every malformed file, row or setting ends in
exit code 2 with a message naming the file (and line) and the fix, and writes nothing; the
documented escapes (--skip-invalid, a byte-order mark) and valid but unusual data (any script,
emoji, Unicode line separators inside strings, a 100,000-character question) go through whole.

Runs call `main(argv)` in-process; semantic de-duplication is off (--threshold 1.0) unless the
case is about it, so no model loads except in the one real-weights case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.prepare import main, prepare
from helpers import MULTILINGUAL, png_bytes, row

OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "prepare.json", "ragft_config.yaml")
GOOD = [{"question": f"What is concept number {i}?", "answer": f"Concept {i} is explained here."} for i in range(10)]
GOOD_TEXT = "".join(json.dumps(r) + "\n" for r in GOOD)




def _run(capsys, raw: Path, out: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["--input", str(raw), "--out", str(out), "--threshold", "1.0", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_nothing_written(out: Path) -> None:
    written = [name for name in OUTPUTS if (out / name).exists()]
    assert not written, f"a failed run left {written} in {out}"
    if out.exists():
        assert not list(out.glob(".*.tmp")), "temporary files left behind"


# --------------------------------------------------------------------------------------------
# files and rows that must be refused: exit 2, file:line, the fix, no output
# --------------------------------------------------------------------------------------------

# (case id, file name, content, fragments of the error; "{path}" is the input file)
REFUSED = [
    ("empty-file", "raw.jsonl", b"", ["{path}: no valid question/answer records", "non-empty 'question' and 'answer'"]),
    ("whitespace-only-file", "raw.jsonl", b"  \n\t\n\n", ["{path}: no valid question/answer records"]),
    ("empty-question", "raw.jsonl", (GOOD_TEXT + row(question="", answer="x")).encode(), ["{path}:11: field 'question' is empty", "--skip-invalid"]),
    ("whitespace-question", "raw.jsonl", (GOOD_TEXT + row(question=" \t ", answer="x")).encode(), ["{path}:11: field 'question' is empty"]),
    ("question-is-number", "raw.jsonl", (GOOD_TEXT + row(question=42, answer="x")).encode(), ["{path}:11: field 'question' must be a string, got int (42)", "fix the row"]),
    ("question-is-list", "raw.jsonl", (GOOD_TEXT + row(question=["a", "b"], answer="x")).encode(), ["{path}:11: field 'question' must be a string, got list"]),
    ("question-is-null", "raw.jsonl", (GOOD_TEXT + row(question=None, answer="x")).encode(), ["{path}:11: missing field 'question'"]),
    ("answer-missing", "raw.jsonl", (GOOD_TEXT + row(question="q?")).encode(), ["{path}:11: missing field 'answer'"]),
    ("row-is-array", "raw.jsonl", (GOOD_TEXT + '["q?", "a"]\n').encode(), ["{path}:11: expected an object with 'question' and 'answer', got list"]),
    ("malformed-json", "raw.jsonl", (GOOD_TEXT + '{"question": "q?" "answer": "a"}\n').encode(), ["{path}:11: bad JSON (Expecting ',' delimiter at column 19)"]),
    ("truncated-mid-line", "raw.jsonl", (GOOD_TEXT + '{"question": "What is a tr').encode(), ["{path}:11: bad JSON (Unterminated string starting at column 14)"]),
    ("latin-1-file", "raw.jsonl", (GOOD_TEXT + row(question="Qu'est-ce qu'un café ?", answer="Une boisson.")).encode("latin-1"), ["{path}:11: not UTF-8 (byte 0xe9 at column %d;" % (len('{"question": "Qu\'est-ce qu\'un caf') + 1), "re-save the file as UTF-8"]),
    ("png-as-jsonl", "raw.jsonl", png_bytes(), ["{path}: looks binary (NUL bytes), not .jsonl text", "UTF-8 text file"]),
    ("png-as-csv", "raw.csv", png_bytes(), ["{path}: looks binary (NUL bytes), not .csv text"]),
    ("png-as-json", "raw.json", png_bytes(), ["{path}: looks binary (NUL bytes), not .json text"]),
    ("png-as-md", "raw.md", png_bytes(), ["{path}: unsupported file type '.md'", ".jsonl, .json, .csv"]),
    ("png-as-txt", "raw.txt", png_bytes(), ["{path}: unsupported file type '.txt'"]),
    ("latin-1-csv", "raw.csv", "question,answer\nWhat is a B-tree?,A tree.\nQu'est-ce qu'un café ?,Une boisson.\n".encode("latin-1"), ["{path}:3: not UTF-8 (byte 0xe9)", "re-save the file as UTF-8"]),
    ("csv-without-answer-column", "raw.csv", b"question,reply\nq?,a\n", ["{path}:1: CSV header ['question', 'reply'] lacks answer", "must name 'question' and 'answer'"]),
    ("csv-extra-cells", "raw.csv", b"question,answer\nq?,a,extra\n", ["{path}:2: 3 cells for 2 header columns"]),
    ("json-truncated", "raw.json", json.dumps(GOOD, indent=1)[:200].encode(), ["{path}:", "bad JSON (", "a .json file must hold one list of objects"]),
    ("json-object-not-list", "raw.json", b'{"question": "q?", "answer": "a"}', ["{path}:1: a .json file must hold a list of objects, got dict", "use .jsonl"]),
    ("json-question-is-number", "raw.json", json.dumps([*GOOD[:2], {"question": 7, "answer": "a"}]).encode(), ["{path}:3: field 'question' must be a string, got int"]),
]


@pytest.mark.parametrize(("name", "content", "fragments"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_bad_file_is_refused_naming_file_line_and_fix(tmp_path, capsys, name, content, fragments):
    raw = tmp_path / name
    raw.write_bytes(content)
    out = tmp_path / "out"
    code, _, err = _run(capsys, raw, out)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment.format(path=raw) in err, err
    assert " at at " not in err  # JSON's own "starting at" is not doubled
    _assert_nothing_written(out)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "missing.jsonl", "{path}: no such file; pass an existing .jsonl, .json or .csv file"),
        (lambda tmp: (tmp / "empty_folder").mkdir() or tmp / "empty_folder", "{path}: is a folder; pass a .jsonl, .json or .csv file"),
        (lambda tmp: (tmp / "folder.jsonl").mkdir() or tmp / "folder.jsonl", "{path}: is a folder"),
    ],
    ids=["missing-file", "empty-folder", "folder-named-jsonl"],
)
def test_missing_file_or_folder_as_input_is_refused(tmp_path, capsys, make, fragment):
    raw = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = _run(capsys, raw, out)
    assert code == 2 and fragment.format(path=raw) in err
    _assert_nothing_written(out)


def test_only_invalid_rows_with_skip_invalid_is_still_an_error(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('not json\n{"question": 3, "answer": "a"}\n', encoding="utf-8")
    code, _, err = _run(capsys, raw, tmp_path / "out", "--skip-invalid")
    assert code == 2 and f"{raw}: no valid question/answer records (2 invalid rows skipped)" in err
    _assert_nothing_written(tmp_path / "out")


def test_a_failed_run_leaves_the_previous_complete_output_untouched(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    assert _run(capsys, good, out)[0] == 0
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD_TEXT.encode() + b'{"question": "cut')
    assert _run(capsys, bad, out)[0] == 2
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before


def test_an_interrupted_write_never_mixes_new_and_old_splits(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or a full disk) while the splits are written: the previous set stays whole."""
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    assert _run(capsys, good, out)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "test.jsonl", "prepare.json")}

    import pipeline.fileio as fileio

    synced = []
    real_fsync = fileio.os.fsync

    def fsync_then_interrupt(fd):
        synced.append(fd)
        if len(synced) == 3:  # train and val are written, test is being written
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync_then_interrupt)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(row(question=f"Other question {i}?", answer=f"Other {i}.") for i in range(10)), encoding="utf-8")
    code = main(["--input", str(other), "--out", str(out), "--threshold", "1.0"])
    assert code == 130 and "run the same command again" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--set", "data.bogus=1"], ["override data.bogus=1: unknown key 'data.bogus' in section 'data'", "valid keys: input, dir"]),
        (["--set", "data.seed=abc"], ["override data.seed=abc: data.seed must be an integer; got 'abc'"]),
        (["--set", "retrieve.top_k=abc"], ["override retrieve.top_k=abc: retrieve.top_k must be an integer; got 'abc'"]),
        (["--set", "retrieve.top_k=-3"], ["override retrieve.top_k=-3: retrieve.top_k must be > 0; got -3"]),
        (["--set", "data.ratios=[0.5, 0.6, 0.1]"], ["split ratios [0.5, 0.6, 0.1] must be three non-negative fractions summing to 1"]),
        (["--ratios", "0.7,-0.1,0.4"], ["must be three non-negative fractions summing to 1"]),
        (["--threshold", "1.5"], ["override data.dedup_threshold=1.5: data.dedup_threshold must be in (0, 1]; got 1.5"]),
    ],
    ids=["unknown-key", "wrong-type", "top-k-not-a-number", "negative-top-k", "ratios-sum", "negative-ratio", "threshold-range"],
)
def test_bad_setting_is_refused_naming_the_override(tmp_path, capsys, flags, fragments):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["--input", str(raw), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert "tiny.yaml" not in err, "the value came from the command line, not from the profile file"
    _assert_nothing_written(out)


def test_unknown_key_in_a_profile_file_names_that_file(tmp_path, capsys):
    profile = tmp_path / "mine.yaml"
    profile.write_text("data:\n  dedup_treshold: 0.8\n", encoding="utf-8")
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD_TEXT, encoding="utf-8")
    code = main(["--config", str(profile), "--input", str(raw), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{profile}: unknown key 'data.dedup_treshold'" in err and "dedup_threshold" in err.split("valid keys:")[1]
    _assert_nothing_written(tmp_path / "out")


def test_missing_dedup_model_is_refused_before_any_output(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD_TEXT, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["--input", str(raw), "--out", str(out), "--model", "/nonexistent/minilm"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "/nonexistent/minilm" in err and "Fix:" in err
    _assert_nothing_written(out)


# --------------------------------------------------------------------------------------------
# handled as documented
# --------------------------------------------------------------------------------------------


def test_skip_invalid_skips_every_kind_of_bad_row_and_reports_each(tmp_path, capsys):
    good = GOOD[:6]
    lines = [
        row(**good[0]).encode(),
        b'{"question": "broken" "answer": "x"}\n',  # 2: malformed
        row(**good[1]).encode(),
        row(question=None, answer="x").encode(),  # 4: null
        row(question=["list"], answer="x").encode(),  # 5: list
        row(**good[2]).encode(),
        row(question="   ", answer="x").encode(),  # 7: whitespace-only
        row(question="Qu'est-ce qu'un café ?", answer="x").encode("latin-1"),  # 8: latin-1
        row(**good[3]).encode(),
        b"[1, 2]\n",  # 10: not an object
        row(**good[4]).encode(),
        row(**good[5]).encode(),
        b'{"question": "cut off mid-li',  # 13: truncated
    ]
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(lines))
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, raw, out, "--skip-invalid")
    assert code == 0, err
    assert "6 records" in stdout and "(7 invalid rows skipped)" in stdout
    report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert report["counts"]["invalid_skipped"] == 7 and report["counts"]["valid"] == 6
    assert [r["line"] for r in report["skipped_rows"]] == [2, 4, 5, 7, 8, 10, 13]
    for line in (2, 4, 5, 7, 8, 10, 13):
        assert f"skipped {raw}:{line}: " in stdout
    kept = [json.loads(text) for name in ("train", "val", "test") for text in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["question"] for r in kept) == sorted(r["question"] for r in good)




@pytest.mark.parametrize("fmt", ["jsonl", "jsonl-bom", "json", "csv"])
def test_any_script_emoji_and_unicode_separators_round_trip_exactly(tmp_path, capsys, fmt):
    raw = tmp_path / f"raw.{fmt.split('-')[0]}"
    if fmt == "jsonl":
        raw.write_text("".join(row(**r) for r in MULTILINGUAL), encoding="utf-8")
    elif fmt == "jsonl-bom":  # Windows editors save UTF-8 with a byte-order mark
        raw.write_text("".join(row(**r) for r in MULTILINGUAL), encoding="utf-8-sig")
    elif fmt == "json":
        raw.write_text(json.dumps(MULTILINGUAL, ensure_ascii=False, indent=1), encoding="utf-8-sig")
    else:
        import csv

        with open(raw, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
            writer.writeheader()
            writer.writerows(MULTILINGUAL)
    out = tmp_path / "out"
    code, _, err = _run(capsys, raw, out)
    assert code == 0, err
    written = [json.loads(line) for name in ("train", "val", "test") for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert sorted(written, key=lambda r: r["question"]) == sorted(MULTILINGUAL, key=lambda r: r["question"])
    from pipeline.data import load_split

    assert sorted(r["question"] for s in ("train", "val", "test") for r in load_split(out, s)) == sorted(r["question"] for r in MULTILINGUAL)


def test_a_100k_character_question_is_kept_whole(tmp_path):
    """The data keeps the question whole; only the de-duplication embedder reads a prefix (MiniLM:
    256 tokens), which the Python API's embed function receives as the full text."""
    long_question = "Why does the cache " + "really " * 14_300 + "miss?"
    assert len(long_question) > 100_000
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD_TEXT + row(question=long_question, answer="Because it is cold."), encoding="utf-8")
    seen: list[int] = []

    def embed(texts):
        seen.extend(len(t) for t in texts)
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(texts), 8))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    config = load_config("tiny", [f"data.input={raw}", f"data.dir={tmp_path / 'out'}", "data.dedup_threshold=0.99"])
    report = prepare(config, embed=embed, log=lambda _: None)
    assert report["counts"]["semantic_dedup"] == 11 and max(seen) == len(long_question)
    kept = [json.loads(line) for s in ("train", "val", "test") for line in (tmp_path / "out" / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert long_question in [r["question"] for r in kept]


@pytest.mark.realweights
def test_minilm_dedup_handles_every_script_emoji_and_a_100k_question(tmp_path, capsys):
    """The real embedder reads at most its 256-token limit of each question; the text in the splits
    stays whole, and an emoji question's near-duplicate is still recognised."""
    long_question = "Why does the cache " + "really " * 14_300 + "miss?"
    near_duplicate = {"question": "What is a mutex 🔒?", "answer": "A lock."}  # vs "What is a mutex 🔒 ?"
    rows = [*MULTILINGUAL, {"question": long_question, "answer": "Because it is cold."}, near_duplicate]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(row(**r) for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["--input", str(raw), "--out", str(out)])  # the default threshold, 0.9
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    assert (report["counts"]["valid"], report["counts"]["exact_dedup"]) == (len(rows), len(rows))
    kept = {json.loads(line)["question"] for s in ("train", "val", "test") for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").split("\n") if line}
    assert kept == {r["question"] for r in rows[:-1]}, "only the near-duplicate goes; the long question stays whole"
