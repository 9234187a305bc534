"""The agent's calibrated grade (pipeline.grade): features, the logistic fit, calibration error,
the threshold, and the calibration file's errors. Small fixed numbers; no model."""

from __future__ import annotations

import json
import math

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from pipeline.grade import GradeCalibration, GradeError, choose_threshold, expected_calibration_error, fit_logistic, grade_features, reliability_bins


def _node(rerank=None, retrieval=None):
    meta = {}
    if rerank is not None:
        meta["rerank_score"] = rerank
    if retrieval is not None:
        meta["retrieval_score"] = retrieval
    return NodeWithScore(node=TextNode(text="x", metadata=meta), score=0.0)


def test_features_are_the_best_query_likelihood_as_a_log_and_the_best_retrieval_score():
    features = grade_features([_node(0.2, 0.5), _node(0.4, 0.3)])
    assert features == pytest.approx({"ql": math.log(0.4), "dense": 0.5})
    assert grade_features([_node(None, 0.9)]) is None  # no reranker ran: nothing to grade
    assert grade_features([_node(0.0, 0.1)])["ql"] == pytest.approx(math.log(1e-6))  # never -inf


def test_the_logistic_fit_separates_and_orders_its_probabilities():
    rows = [{"ql": -0.5, "dense": 0.8}, {"ql": -0.7, "dense": 0.7}, {"ql": -0.6, "dense": 0.75}, {"ql": -2.5, "dense": 0.3}, {"ql": -2.2, "dense": 0.35}, {"ql": -2.8, "dense": 0.2}]
    labels = [1, 1, 1, 0, 0, 0]
    intercept, coef = fit_logistic(rows, labels, l2=1.0)
    calibration = GradeCalibration(intercept=intercept, coef=coef, threshold=0.5)
    probabilities = [calibration.probability(r) for r in rows]
    assert coef["ql"] > 0 and coef["dense"] > 0
    assert min(probabilities[:3]) > 0.5 > max(probabilities[3:])


def test_the_logistic_fit_of_an_uninformative_feature_is_the_base_rate():
    rows = [{"ql": 0.0, "dense": 0.0}] * 4
    intercept, coef = fit_logistic(rows, [1, 1, 1, 0])
    assert 1 / (1 + math.exp(-intercept)) == pytest.approx(0.75, abs=1e-6) and coef == {"ql": 0.0, "dense": 0.0}


def test_the_fit_refuses_one_class_or_mismatched_labels():
    with pytest.raises(GradeError, match="both"):
        fit_logistic([{"ql": 0.0, "dense": 0.0}], [1])
    with pytest.raises(GradeError, match="as many labels"):
        fit_logistic([{"ql": 0.0, "dense": 0.0}], [1, 0])


def test_calibration_error_and_reliability_bins_on_known_values():
    probabilities = [0.05, 0.05, 0.95, 0.95]
    assert expected_calibration_error(probabilities, [0, 0, 1, 1]) == pytest.approx(0.05)
    assert expected_calibration_error(probabilities, [1, 1, 0, 0]) == pytest.approx(0.95)
    bins = reliability_bins([0.15, 0.12, 1.0], [1, 0, 1])
    assert bins == [{"low": 0.1, "high": 0.2, "count": 2, "mean_p": pytest.approx(0.135), "answerable": 0.5}, {"low": 0.9, "high": 1.0, "count": 1, "mean_p": 1.0, "answerable": 1.0}]


def test_the_threshold_refuses_at_most_the_allowed_share_of_answerable_questions():
    probabilities = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35]
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert choose_threshold(probabilities, labels, max_refused_answerable=0.0) == 0.35  # nothing answerable below it
    threshold = choose_threshold(probabilities, labels, max_refused_answerable=0.3)  # 2 of 7 may fall below
    assert threshold == 0.5 and sum(p < threshold for p, y in zip(probabilities, labels) if y) == 2


def test_a_calibration_round_trips_and_bad_files_say_how_to_fit_one(tmp_path):
    path = tmp_path / "grade.json"
    made = GradeCalibration(intercept=0.5, coef={"ql": 1.5, "dense": 2.0}, threshold=0.4, fitted_on={"split": "dev"})
    made.save(path)
    assert GradeCalibration.load(path) == made
    assert made.probability({"ql": 0.0, "dense": 0.0}) == pytest.approx(1 / (1 + math.exp(-0.5)))
    with pytest.raises(GradeError, match="needs features"):
        made.probability({"ql": 0.0})
    with pytest.raises(GradeError, match="does not exist.*--fit"):
        GradeCalibration.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GradeError, match="not a grade calibration"):
        GradeCalibration.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps({"intercept": 0, "coef": {"length": 1.0}, "threshold": 0.5}))
    with pytest.raises(GradeError, match="unknown"):
        GradeCalibration.load(tmp_path / "odd.json")
