"""Bad input matrix of `python -m eval.score`: a prediction file that is empty, malformed, cut
off, of the wrong types, not UTF-8 or not text at all, and every bad setting, ends in exit code 2
with a message naming the file and line and the fix, before any model loads, and `--out` gets
nothing. Text in any script, with emoji or Unicode line separators inside strings, a byte-order
mark, and 100,000-character fields are scored (in seconds, not minutes).

Runs call `main(argv)` in-process with --no-bertscore (no model) unless the case is about the
BERTScore model."""

from __future__ import annotations

import json
import time

import pytest

from eval.score import main
from helpers import MULTILINGUAL, png_bytes, row

GOOD = [{"question": f"q{i}", "prediction": f"the answer is {i}", "reference": f"the answer is number {i}"} for i in range(5)]
GOOD_TEXT = "".join(json.dumps(r) + "\n" for r in GOOD)
FAST = ["--no-bertscore", "--no-progress", "--samples", "20"]




def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# (case id, file content, fragments; "{path}" is the file)
REFUSED = [
    ("empty-file", b"", ["{path}: no predictions (the file is empty)", "one JSON object with question, prediction, reference"]),
    ("whitespace-only-file", b"\n  \n\t\n", ["{path}: no predictions"]),
    ("missing-reference", (GOOD_TEXT + row(question="q", prediction="p")).encode(), ["{path} line 6: missing field(s) 'reference'", "every line needs question, prediction, reference"]),
    ("missing-everything", (GOOD_TEXT + row(answer="a")).encode(), ["{path} line 6: missing field(s) 'question', 'prediction', 'reference'"]),
    ("prediction-is-number", (GOOD_TEXT + row(question="q", prediction=3, reference="r")).encode(), ["{path} line 6: field 'prediction' is int (3), expected a string", 'use "" for an empty answer']),
    ("reference-is-null", (GOOD_TEXT + row(question="q", prediction="p", reference=None)).encode(), ["{path} line 6: field 'reference' is NoneType"]),
    ("question-is-list", (GOOD_TEXT + row(question=["q"], prediction="p", reference="r")).encode(), ["{path} line 6: field 'question' is list"]),
    ("prediction-is-bool", (GOOD_TEXT + row(question="q", prediction=True, reference="r")).encode(), ["{path} line 6: field 'prediction' is bool"]),
    ("row-is-array", (GOOD_TEXT + '["q", "p", "r"]\n').encode(), ["{path} line 6: expected a JSON object with question, prediction, reference; got a list"]),
    ("malformed-json", (GOOD_TEXT + "{'question': 'q'}\n").encode(), ["{path} line 6: not valid JSON (Expecting property name enclosed in double quotes at column 2)", "each line must be one JSON object"]),
    ("truncated-mid-line", (GOOD_TEXT + '{"question": "q", "prediction": "the ans').encode(), ["{path} line 6: not valid JSON (Unterminated string starting at column 33)"]),
    ("latin-1-file", (GOOD_TEXT + row(question="café", prediction="crème", reference="brûlée")).encode("latin-1"), ["{path} line 6: not UTF-8 text (byte 0xe9)", "save the file as UTF-8"]),
    ("png-as-jsonl", png_bytes(), ["{path} line 1: not UTF-8 text (byte 0x89)"]),
]


@pytest.mark.parametrize(("content", "fragments"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_bad_prediction_file_is_refused_and_nothing_is_written(tmp_path, capsys, content, fragments):
    path = tmp_path / "full.jsonl"
    path.write_bytes(content)
    good = tmp_path / "rag_vanilla.jsonl"
    good.write_text(GOOD_TEXT, encoding="utf-8")
    out = tmp_path / "scores"
    code, stdout, err = _run(capsys, str(good), str(path), *FAST, "--out", str(out))
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment.format(path=path) in err, err
    assert " at at " not in err
    assert stdout == "" and not out.exists(), "a refused run prints no table and writes no --out folder"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "missing.jsonl", "{path}: no such file; pass .jsonl files written by eval.compare"),
        (lambda tmp: (tmp / "results").mkdir() or tmp / "results", "{path}: is a folder; pass the prediction files in it, e.g. {path}/*.jsonl"),
    ],
    ids=["missing-file", "empty-folder"],
)
def test_missing_file_or_folder_is_refused(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    out = tmp_path / "scores"
    code, _, err = _run(capsys, str(path), *FAST, "--out", str(out))
    assert code == 2 and fragment.format(path=path) in err, err
    assert not out.exists()


def test_files_with_the_same_stem_are_refused(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "full.jsonl").write_text(GOOD_TEXT, encoding="utf-8")
    code, _, err = _run(capsys, str(tmp_path / "a" / "full.jsonl"), str(tmp_path / "b" / "full.jsonl"), *FAST, "--out", str(tmp_path / "scores"))
    assert code == 2 and "several files share the name(s) full; systems are named by file stem, rename one" in err
    assert not (tmp_path / "scores").exists()


def test_a_baseline_that_matches_no_file_is_refused(tmp_path, capsys):
    path = tmp_path / "full.jsonl"
    path.write_text(GOOD_TEXT, encoding="utf-8")
    code, _, err = _run(capsys, str(path), *FAST, "--baseline", "rag_vanila", "--out", str(tmp_path / "scores"))
    assert code == 2 and "--baseline 'rag_vanila' matches none of the files (full)" in err
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--set", "eval.bogus=1"], "override eval.bogus=1: unknown key 'eval.bogus' in section 'eval'; valid keys: split, systems"),
        (["--set", "eval.bootstrap_samples=abc"], "override eval.bootstrap_samples=abc: eval.bootstrap_samples must be an integer; got 'abc'"),
        (["--set", "retrieve.top_k=abc"], "override retrieve.top_k=abc: retrieve.top_k must be an integer; got 'abc'"),
        (["--set", "retrieve.top_k=-1"], "override retrieve.top_k=-1: retrieve.top_k must be > 0; got -1"),
        (["--samples", "-5"], "override eval.bootstrap_samples=-5: eval.bootstrap_samples must be > 0; got -5"),
    ],
    ids=["unknown-key", "wrong-type", "top-k-not-a-number", "negative-top-k", "negative-samples"],
)
def test_bad_setting_is_refused_naming_the_override(tmp_path, capsys, flags, fragment):
    path = tmp_path / "full.jsonl"
    path.write_text(GOOD_TEXT, encoding="utf-8")
    code, _, err = _run(capsys, str(path), "--no-bertscore", "--no-progress", *flags, "--out", str(tmp_path / "scores"))
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "scores").exists()


def test_missing_bertscore_model_is_refused_before_scoring(tmp_path, capsys):
    path = tmp_path / "full.jsonl"
    path.write_text(GOOD_TEXT, encoding="utf-8")
    code, stdout, err = _run(capsys, str(path), "--no-progress", "--samples", "20", "--bertscore-model", "/nonexistent/roberta", "--out", str(tmp_path / "scores"))
    assert code == 2 and "Traceback" not in err
    assert "/nonexistent/roberta" in err and "Fix:" in err
    assert stdout == "" and not (tmp_path / "scores").exists()


# --------------------------------------------------------------------------------------------
# valid but unusual text
# --------------------------------------------------------------------------------------------



@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_any_script_emoji_and_unicode_separators_are_scored(tmp_path, capsys, encoding):
    """Each system answers every question exactly: exact match and token F1 are 1 in every script."""
    path = tmp_path / "full.jsonl"
    text = "".join(row(question=q, prediction=a, reference=a) for q, a in MULTILINGUAL)
    path.write_bytes(text.replace("\n", "\r\n").encode(encoding))  # Windows line ends too
    baseline = tmp_path / "rag_vanilla.jsonl"
    baseline.write_text("".join(row(question=q, prediction="", reference=a) for q, a in MULTILINGUAL), encoding="utf-8")
    code, stdout, err = _run(capsys, str(path), str(baseline), *FAST, "--format", "json")
    assert code == 0, err
    result = json.loads(stdout)
    full = result["systems"]["full"]
    assert full["n"] == len(MULTILINGUAL)
    assert full["exact_match"] == full["exact_match_squad"] == full["token_f1"] == 1.0
    assert result["systems"]["rag_vanilla"]["exact_match"] == 0.0
    assert full["vs_baseline"]["n_paired"] == len(MULTILINGUAL), "questions in every script pair up by their text"


def test_100k_character_fields_are_scored_in_seconds(tmp_path, capsys):
    """rouge_score's own LCS table is quadratic in pure Python: two 20,000-word texts took over two
    minutes. The LCS is computed bit-parallel now, with the very same values."""
    long_question = "Why does the cache " + "really " * 14_300 + "miss?"
    long_answer = " ".join(f"word{i % 97}" for i in range(16_000))  # > 100,000 characters
    assert len(long_question) > 100_000 and len(long_answer) > 100_000
    path = tmp_path / "full.jsonl"
    path.write_text(GOOD_TEXT + row(question=long_question, prediction=long_answer, reference=long_answer + " end"), encoding="utf-8")
    code, stdout, err = _run(capsys, str(path), *FAST, "--format", "json")
    assert code == 0, err
    assert json.loads(stdout)["systems"]["full"]["n"] == 6

    from eval.metrics import rouge_l_f1

    started = time.perf_counter()
    value = rouge_l_f1([long_answer], [long_answer + " end"])[0]
    assert time.perf_counter() - started < 5
    assert value == pytest.approx(2 * 16_000 / (16_000 + 16_001))


def test_rouge_l_is_exactly_rouge_scores_value_on_varied_text():
    """The bit-parallel LCS gives rouge_score's numbers (same tokenizer, same formula)."""
    import random

    from rouge_score import rouge_scorer

    from eval.metrics import rouge_l_f1

    rng = random.Random(7)
    words = "the a B-tree tree is balanced ; node keys Keys 42 café 树 🌲 and or it's".split()
    predictions = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    references = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert rouge_l_f1(predictions, references) == [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
