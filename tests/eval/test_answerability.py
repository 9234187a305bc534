"""The answerability benchmark's builders and scoring on small fixed data (no model)."""

from __future__ import annotations

import json
import math

import pytest

from eval.answerability.__main__ import main
from eval.answerability.benchmark import IN_KB, evaluate, fit_calibration, in_kb_questions, out_of_kb_questions, to_markdown
from pipeline.data import DataError
from pipeline.grade import GradeCalibration


def test_out_of_kb_files_hold_60_hand_written_questions_each_near_and_far():
    for split in ("dev", "test"):
        rows = out_of_kb_questions(split)
        kinds = [r["kind"] for r in rows]
        assert len(rows) >= 60 and kinds.count("near") >= 30 and kinds.count("far") >= 30
        assert all(r["answerable"] == 0 for r in rows) and len({r["question"] for r in rows}) == len(rows)
    dev, test = out_of_kb_questions("dev"), out_of_kb_questions("test")
    assert not {r["question"] for r in dev} & {r["question"] for r in test}
    with pytest.raises(DataError, match="dev .* or test"):
        out_of_kb_questions("val")


def test_bad_out_of_kb_rows_are_named(tmp_path):
    (tmp_path / "out_of_kb_dev.jsonl").write_text(json.dumps({"id": "x1", "kind": "maybe", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"\['x1'\]"):
        out_of_kb_questions("dev", tmp_path)


def test_in_kb_questions_take_a_seeded_sample_and_the_hand_written_single_messages(tmp_path):
    split = [{"question": f"What is thing {i}?", "answer": f"Thing {i} is a thing."} for i in range(30)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    rows = in_kb_questions(tmp_path, "dev", seed_questions=10, seed=1)
    again = in_kb_questions(tmp_path, "dev", seed_questions=10, seed=1)
    assert rows == again and all(r["answerable"] == 1 and r["kind"] in IN_KB for r in rows)
    seeds = [r for r in rows if r["kind"] == "seed"]
    assert len(seeds) == 10 and len({r["question"] for r in seeds}) == 10
    realistic = [r for r in rows if r["kind"] == "realistic"]
    assert len(realistic) >= 50  # the verbose and compound hand-written messages of the val file; no follow-ups
    assert len([r for r in rows if r["kind"] == "documents"]) == 32


def _rows():
    rows = []
    for i, ql in enumerate([-0.4, -0.6, -0.5, -0.9, -1.0, -0.7, -0.8, -0.3]):
        rows.append({"id": f"in{i}", "kind": "seed", "answerable": 1, "features": {"ql": ql, "dense": 0.7}})
    for i, ql in enumerate([-2.5, -2.0, -1.1, -3.0]):
        rows.append({"id": f"far{i}", "kind": "far", "answerable": 0, "features": {"ql": ql, "dense": 0.2}})
    for i, ql in enumerate([-1.5, -0.95, -1.8, -1.2]):
        rows.append({"id": f"near{i}", "kind": "near", "answerable": 0, "features": {"ql": ql, "dense": 0.5}})
    return rows


def test_fit_then_evaluate_refuses_out_of_kb_within_the_allowed_in_kb_share():
    rows = _rows()
    calibration = fit_calibration(rows, max_refused=0.0, fitted_on={"split": "dev"})
    result = evaluate(rows, calibration, samples=200)
    refusal = result["refusal"]
    assert refusal["in-KB"]["rate"] == 0.0 and refusal["seed"]["n"] == 8
    assert refusal["far"]["rate"] == 1.0 and refusal["out-of-KB"]["n"] == 8
    assert 0.0 <= result["ece"] <= 1.0 and sum(b["count"] for b in result["reliability"]) == len(rows)
    assert calibration.fitted_on == {"split": "dev", "questions": 16, "max_refused_in_kb": 0.0}
    table = to_markdown({"split": "dev", "questions": 16, "calibration": {"intercept": calibration.intercept, "coef": calibration.coef, "fitted_on": calibration.fitted_on}, "evaluation": result})
    assert "| far | 4 | 1.000" in table and "| in-KB | 8 | 0.000" in table


def test_a_question_without_features_is_answered_not_refused():
    rows = [{"id": "a", "kind": "far", "answerable": 0, "features": None}]
    result = evaluate(rows, GradeCalibration(intercept=0.0, coef={"ql": 1.0, "dense": 1.0}, threshold=0.9), samples=50)
    assert result["refusal"]["far"]["rate"] == 0.0


def test_the_command_refuses_fitting_on_test_and_needs_one_mode(capsys):
    assert main(["--split", "test", "--fit", "x.json"]) == 2
    assert "fit and choose the threshold on dev" in capsys.readouterr().err
    assert main(["--split", "dev"]) == 2
    assert "exactly one of --fit" in capsys.readouterr().err


def test_refusals_on_predictions_read_the_grade_from_each_trace(tmp_path):
    from eval.answerability.benchmark import refusals_on_predictions, trace_features

    def row(question, answer, scores):
        reranked = [{"id": f"p{i}", "rerank_score": q, "retrieval_score": d} for i, (q, d) in enumerate(scores)]
        return {"question": question, "prediction": answer, "reference": answer, "trace": {"search_question": question, "rounds": [{"reranked": reranked}]}}

    rows = [row("What is TCP?", "TCP is a reliable transport protocol.", [(0.5, 0.9), (0.1, 0.2), (0.9, 0.1)]), row("Best pancake recipe?", "Mix flour and eggs.", [(0.01, 0.1), (0.02, 0.05)])]
    path = tmp_path / "full.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert trace_features(rows[0]["trace"], top_n=2) == pytest.approx({"ql": math.log(0.5), "dense": 0.9})  # the third candidate was not kept
    assert trace_features({"rounds": [{"reranked": [{"id": "x"}]}]}, top_n=3) is None
    calibration = GradeCalibration(intercept=-2.0, coef={"ql": 0.0, "dense": 5.0}, threshold=0.5)  # refuses when dense < 0.4
    report = refusals_on_predictions(path, calibration, top_n=2, samples=100)
    assert report["refused"] == 1 and report["refused_questions"] == ["Best pancake recipe?"]
    assert report["rougeL_answered"] == pytest.approx(1.0) and report["rougeL_with_refusals"] < 1.0
    assert report["rougeL_change"]["diff"] == pytest.approx(report["rougeL_with_refusals"] - 1.0)
