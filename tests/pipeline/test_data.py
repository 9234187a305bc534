"""Loading, validation, de-duplication and splitting of question/answer data."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipeline.data import (
    DataError,
    check_ratios,
    exact_dedup,
    greedy_semantic_keep,
    load_records,
    load_split,
    semantic_dedup,
    split_records,
)


def write(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


GOOD = '{"question": "What is a heap?", "answer": "A tree with the heap property."}\n'


# ------------------------------------------------------------------ formats


def test_loads_jsonl_json_and_csv_alike(tmp_path):
    rows = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2, with comma?", "answer": 'A2 "quoted"'}]
    jsonl = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    as_json = write(tmp_path, "d.json", json.dumps(rows))
    csv_text = 'question,answer\nQ1?,A1\n"Q2, with comma?","A2 ""quoted"""\n'
    as_csv = write(tmp_path, "d.csv", csv_text)
    for path in (jsonl, as_json, as_csv):
        assert load_records(path).records == rows


def test_extra_fields_are_dropped_and_blank_lines_ignored(tmp_path):
    path = write(tmp_path, "d.jsonl", '\n{"question": "Q?", "answer": "A", "id": 7}\n\n')
    assert load_records(path).records == [{"question": "Q?", "answer": "A"}]


def test_text_is_kept_verbatim(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"question": "  Qué es TCP? 🚀 ", "answer": "Un protocolo."}) + "\n")
    assert load_records(path).records[0]["question"] == "  Qué es TCP? 🚀 "


# ------------------------------------------------------------------ every validation error names the line


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"question": "Q?", "answer": "A"', "bad JSON"),
        ('{"answer": "A"}', "missing field 'question'"),
        ('{"question": "Q?"}', "missing field 'answer'"),
        ('{"question": "Q?", "answer": null}', "missing field 'answer'"),
        ('{"question": "   ", "answer": "A"}', "field 'question' is empty"),
        ('{"question": "Q?", "answer": ""}', "field 'answer' is empty"),
        ('{"question": 42, "answer": "A"}', "field 'question' must be a string, got int"),
        ('{"question": "Q?", "answer": ["A"]}', "field 'answer' must be a string, got list"),
        ('["Q?", "A"]', "expected an object"),
    ],
)
def test_jsonl_errors_name_file_line_and_problem(tmp_path, line, problem):
    path = write(tmp_path, "d.jsonl", GOOD + GOOD + line + "\n" + GOOD)
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert f"{path}:3: {problem}" in message
    assert "--skip-invalid" in message


def test_non_utf8_line_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "d.jsonl", GOOD.encode() + b'{"question": "caf\xe9?", "answer": "A"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not UTF-8 \(byte 0xe9"):
        load_records(path)


def test_non_utf8_csv_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "d.csv", b"question,answer\nQ?,A\nQ2?,caf\xe9\n")
    with pytest.raises(DataError, match=r"d\.csv:3: not UTF-8"):
        load_records(path)


def test_truncated_json_list_names_the_line(tmp_path):
    path = write(tmp_path, "d.json", '[\n {"question": "Q?", "answer": "A"},\n {"question": "Q2?", "ans')
    with pytest.raises(DataError, match=r"d\.json:3: bad JSON"):
        load_records(path)


def test_json_that_is_not_a_list(tmp_path):
    path = write(tmp_path, "d.json", '{"question": "Q?", "answer": "A"}')
    with pytest.raises(DataError, match="must hold a list of objects, got dict"):
        load_records(path)


def test_json_list_item_error_names_its_position(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([{"question": "Q?", "answer": "A"}, {"question": "Q2?", "answer": 3}]))
    with pytest.raises(DataError, match=r"d\.json:2: field 'answer' must be a string"):
        load_records(path)


def test_csv_header_without_required_columns(tmp_path):
    path = write(tmp_path, "d.csv", "q,a\nQ?,A\n")
    with pytest.raises(DataError, match=r"d\.csv:1: CSV header \['q', 'a'\] lacks question, answer"):
        load_records(path)


def test_csv_row_with_too_many_cells(tmp_path):
    path = write(tmp_path, "d.csv", "question,answer\nQ?,A\nQ2?,A2,extra\n")
    with pytest.raises(DataError, match=r"d\.csv:3: 3 cells for 2 header columns"):
        load_records(path)


def test_csv_row_with_missing_cell(tmp_path):
    path = write(tmp_path, "d.csv", "question,answer\nQ?,A\nQ2?\n")
    with pytest.raises(DataError, match=r"d\.csv:3: missing field 'answer'"):
        load_records(path)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("d.txt", "x", "unsupported file type '.txt'"),
        ("d.jsonl", "", "no valid question/answer records"),
        ("d.jsonl", "\n  \n", "no valid question/answer records"),
        ("d.jsonl", b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_unusable_files(tmp_path, name, content, fragment):
    with pytest.raises(DataError, match=fragment):
        load_records(write(tmp_path, name, content))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        load_records(tmp_path)


def test_skip_invalid_keeps_going_and_reports_each_row(tmp_path):
    content = GOOD + '{"question": ""}\n' + "not json\n" + GOOD.replace("heap", "stack")
    result = load_records(write(tmp_path, "d.jsonl", content), skip_invalid=True)
    assert [r["question"] for r in result.records] == ["What is a heap?", "What is a stack?"]
    assert [(row.line, row.problem.split(" (")[0]) for row in result.skipped] == [(2, "field 'question' is empty"), (3, "bad JSON")]


def test_skip_invalid_with_nothing_valid_still_fails(tmp_path):
    with pytest.raises(DataError, match=r"\(2 invalid rows skipped\)"):
        load_records(write(tmp_path, "d.jsonl", "x\ny\n"), skip_invalid=True)


# ------------------------------------------------------------------ de-duplication


def test_exact_dedup_keeps_first_on_stripped_lowercase_question():
    rows = [
        {"question": "What is DNS?", "answer": "first"},
        {"question": "  what is dns?  ", "answer": "second"},
        {"question": "What is DNS", "answer": "no question mark: different"},
        {"question": "WHAT IS DNS?", "answer": "third"},
    ]
    kept = exact_dedup(rows)
    assert [r["answer"] for r in kept] == ["first", "no question mark: different"]
    assert len(rows) == 4  # input untouched


def test_greedy_semantic_keep_compares_with_kept_rows_only():
    # b is close to a (dropped); c is close to b but not to a: greedy keeps c because b was dropped.
    a = np.array([1.0, 0.0])
    angle_b, angle_c = np.deg2rad(20), np.deg2rad(40)
    b = np.array([np.cos(angle_b), np.sin(angle_b)])
    c = np.array([np.cos(angle_c), np.sin(angle_c)])
    embeddings = np.stack([a, b, c])  # cos(a,b)=0.94, cos(b,c)=0.94, cos(a,c)=0.77
    assert greedy_semantic_keep(embeddings, threshold=0.9) == [0, 2]
    assert greedy_semantic_keep(embeddings, threshold=0.95) == [0, 1, 2]
    assert greedy_semantic_keep(embeddings, threshold=0.5) == [0]


def test_threshold_is_strictly_greater_than():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert greedy_semantic_keep(embeddings, threshold=1.0) == [0, 1]


def test_semantic_dedup_uses_the_embed_function_once_in_order():
    rows = [{"question": q, "answer": "x"} for q in ["alpha", "alpha again", "beta"]]
    calls = []

    def embed(texts):
        calls.append(list(texts))
        vectors = {"alpha": [1.0, 0.0], "alpha again": [0.999, 0.0447], "beta": [0.0, 1.0]}
        return np.array([vectors[t] for t in texts])

    kept = semantic_dedup(rows, embed, threshold=0.9)
    assert [r["question"] for r in kept] == ["alpha", "beta"]
    assert calls == [["alpha", "alpha again", "beta"]]


# ------------------------------------------------------------------ split


def test_split_reproduces_python_random_shuffle_with_int_boundaries():
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(1806)]
    splits = split_records(rows, [0.7, 0.15, 0.15], seed=42)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1264, 270, 272]
    expected = list(rows)
    random.seed(42)
    random.shuffle(expected)
    assert splits["train"] + splits["val"] + splits["test"] == expected
    assert rows[0]["question"] == "q0"  # the caller's list is not shuffled


def test_split_is_seeded():
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(50)]
    assert split_records(rows, [0.7, 0.15, 0.15], 1) == split_records(rows, [0.7, 0.15, 0.15], 1)
    assert split_records(rows, [0.7, 0.15, 0.15], 1) != split_records(rows, [0.7, 0.15, 0.15], 2)


@pytest.mark.parametrize("ratios", [[0.7, 0.3], [0.5, 0.5, 0.5], [1.2, -0.1, -0.1]])
def test_bad_ratios(ratios):
    with pytest.raises(DataError, match="three non-negative fractions summing to 1"):
        check_ratios(ratios)


def test_load_split_of_unprepared_folder_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match="python -m pipeline.prepare"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")


def test_demo_data_is_prepared_and_consistent(demo_dir):
    sizes = {split: len(load_split(demo_dir, split)) for split in ("train", "val", "test")}
    report = json.loads((demo_dir / "prepare.json").read_text(encoding="utf-8"))
    assert sizes == {split: report["counts"][split] for split in sizes}
    assert sum(sizes.values()) == report["counts"]["semantic_dedup"] >= 250
    questions = [r["question"].strip().lower() for split in sizes for r in load_split(demo_dir, split)]
    assert len(questions) == len(set(questions))
