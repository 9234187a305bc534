"""Answer metrics: known values, the seed experiment's figures, bootstrap and paired tests."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from eval import metrics as M
from pipeline import metrics as R

SEED_FIGURES = {  # system: (BLEU-4, ROUGE-L), from the seed data's README
    "vanilla_test": (0.0274, 0.1620),
    "rag_vanilla_test": (0.0515, 0.2266),
    "finetuned_test": (0.0561, 0.1797),
    "rag_finetuned_test": (0.0451, 0.1532),
}


def _seed_rows(seed_dir, name):
    return [json.loads(line) for line in (seed_dir / "results" / f"{name}.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rag_vanilla(seed_dir):
    rows = _seed_rows(seed_dir, "rag_vanilla_test")
    return [r["prediction"] for r in rows], [r["reference"] for r in rows]


# ---- exact match, token F1 --------------------------------------------------------------------


def test_squad_normalization_and_exact_match():
    assert M.normalize_answer_squad("  The B-Tree, an index!  ") == "btree index"
    assert M.exact_match("  Hash Map ", "hash map") == 1.0
    assert M.exact_match("hash map.", "hash map") == 0.0  # plain EM keeps punctuation
    assert M.exact_match_squad("The hash map.", "hash map") == 1.0
    assert M.exact_match_squad("a hash table", "hash map") == 0.0


def test_token_f1_known_values():
    # 2 common tokens; precision 2/3, recall 2/4 -> F1 = 2*(2/3)*(1/2)/(2/3+1/2) = 4/7
    assert M.token_f1("binary search tree", "a binary search on trees") == pytest.approx(4 / 7)
    assert M.token_f1("the cat", "cat") == 1.0  # articles dropped
    assert M.token_f1("x x y", "x y y") == pytest.approx(2 / 3)  # counts are clipped
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("", "answer") == 0.0
    assert M.token_f1("nothing shared", "other words") == 0.0


def test_pairs_are_checked():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        M.corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="prediction 0 is NoneType"):
        M.rouge_l_f1([None], ["a"])


# ---- BLEU -------------------------------------------------------------------------------------


def test_bleu_statistics_sum_to_sacrebleu_corpus_bleu_on_resamples(rag_vanilla):
    import sacrebleu

    predictions, references = rag_vanilla
    stats = M.bleu_statistics(predictions, references)
    assert stats.shape == (len(predictions), 10)
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.integers(0, len(predictions), size=60)
        expected = sacrebleu.corpus_bleu([predictions[i] for i in idx], [[references[i] for i in idx]]).score / 100
        assert M.bleu_from_statistics(stats[idx].sum(axis=0)) == pytest.approx(expected, abs=1e-12)


def test_bleu_known_small_cases():
    assert M.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert M.corpus_bleu(["a b c"], ["a b c"]) == 0.0  # no 4-grams at all: sacrebleu gives 0
    assert M.corpus_bleu(["completely different words here"], ["the cat sat on the mat"]) == 0.0
    with pytest.raises(ValueError, match="need 10 values"):
        M.bleu_from_statistics([1, 2, 3])


@pytest.mark.parametrize("name", list(SEED_FIGURES))
def test_seed_bleu_and_rouge(seed_dir, name):
    rows = _seed_rows(seed_dir, name)
    predictions, references = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    bleu, rouge = SEED_FIGURES[name]
    assert round(M.corpus_bleu(predictions, references), 4) == bleu
    assert np.mean(M.rouge_l_f1(predictions, references)) == pytest.approx(rouge, abs=5e-4)


def test_bleu_bootstrap_is_fast(rag_vanilla):
    scores = M.compute_answer_scores(*rag_vanilla)
    started = time.perf_counter()
    low, high = R.bootstrap_ci(scores.n, scores.statistic("bleu4"), samples=1000, seed=1)
    # Summing precomputed statistics: milliseconds; re-tokenizing per resample would take minutes.
    assert time.perf_counter() - started < 10
    assert low < scores.value("bleu4") < high


# ---- evaluate modules -------------------------------------------------------------------------


def test_evaluate_modules_load_offline_and_combine():
    import evaluate

    bleu = evaluate.load(str(M.EVALUATE_MODULES_DIR / "ragft_bleu"), keep_in_memory=True)
    result = bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    assert result["bleu4"] == pytest.approx(1.0)
    assert result["bleu4_statistics"] == [[6, 6, 6, 5, 4, 3, 6, 5, 4, 3]]
    combined = M.lexical_scores(["The hash map.", "x"], ["hash map", "y z"])
    assert combined["exact_match_squad_per_question"] == [1.0, 0.0]
    assert combined["exact_match"] == 0.0
    assert combined["token_f1"] == pytest.approx(0.5)
    assert combined["rougeL_per_question"][1] == 0.0


# ---- AnswerScores, score_predictions, paired tests --------------------------------------------


def test_score_predictions_without_bertscore(rag_vanilla):
    predictions, references = rag_vanilla
    result = M.score_predictions(predictions, references, bertscore_model=None, samples=300, seed=3)
    assert result["n"] == 272 and result["model_for_bertscore"] is None and "bertscore_f1" not in result
    assert round(result["bleu4"], 4) == 0.0515 and result["rougeL"] == pytest.approx(0.2266, abs=5e-4)
    assert result["primary_metric"] == "bleu4"
    for name in ("bleu4", "rougeL", "exact_match", "exact_match_squad", "token_f1"):
        low, high = result["ci95"][name]
        assert low <= result[name] <= high
    assert result["ci95"]["rougeL"][1] - result["ci95"]["rougeL"][0] > 0.005  # a real interval
    assert M.score_predictions(predictions, references, bertscore_model=None, samples=300, seed=3) == result  # seeded


class FakeBertScore(M.BertScoreModel):
    """Stands in for the model: the logic around it (recording, bootstrap) is under test."""

    def __init__(self):
        super().__init__("fake/model", allow_fallback=False)
        self._resolved = M.ResolvedBertScoreModel("fake/model", "/nowhere", 3, "fake/model")

    def score(self, predictions, references, *, verbose=False):
        return np.array([float(len(p) == len(r)) for p, r in zip(predictions, references)])


def test_bertscore_values_and_model_are_recorded():
    result = M.score_predictions(["ab", "abc", "x"], ["cd", "a", "y"], bertscore_model=FakeBertScore(), samples=50)
    assert result["bertscore_f1"] == pytest.approx(2 / 3)
    assert result["model_for_bertscore"] == "fake/model"
    assert "bertscore_f1" in result["ci95"]


def test_paired_tests():
    a = M.compute_answer_scores(["the cat sat on the mat today", "b c d e f"], ["the cat sat on the mat", "b c d e f"])
    same = M.paired_answer_tests(a, a, samples=200)
    assert same["rougeL"] == {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "p_value": 1.0}
    worse = M.compute_answer_scores(["nothing", "nothing"], ["the cat sat on the mat", "b c d e f"])
    tests = M.paired_answer_tests(a, worse, samples=200)
    assert tests["token_f1"]["diff"] > 0.9 and tests["token_f1"]["p_value"] < 0.05
    with pytest.raises(ValueError, match="same questions"):
        M.paired_answer_tests(a, a.subset([0]))


def test_subset_reorders_every_metric():
    scores = M.compute_answer_scores(["a b", "c"], ["a b", "d"], questions=["q1", "q2"])
    flipped = scores.subset([1, 0])
    assert flipped.questions == ("q2", "q1")
    assert list(flipped.per_question["exact_match"]) == [0.0, 1.0]
    assert flipped.bleu_stats[1].tolist() == scores.bleu_stats[0].tolist()


# ---- BERTScore model resolution (no model is loaded) ------------------------------------------


def test_bertscore_fallback_is_announced_and_recorded(capsys):
    resolved = M.resolve_bertscore_model("no-such-bertscore-model")
    assert resolved.name == M.FALLBACK_BERTSCORE_MODEL and resolved.num_layers == 6
    assert resolved.requested == "no-such-bertscore-model" and resolved.fallback_reason
    assert "falling back to sentence-transformers/all-MiniLM-L6-v2" in capsys.readouterr().err
    assert "no-such-bertscore-model was requested" in resolved.describe()


def test_bertscore_without_fallback_fails_clearly():
    from pipeline.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no-such-owner/no-such-model"):
        M.resolve_bertscore_model("no-such-owner/no-such-model", allow_fallback=False)
    with pytest.raises(ValueError, match="num_layers=0"):
        M.BertScoreModel("roberta-large", num_layers=0)


def test_bertscore_layers():
    resolved = M.resolve_bertscore_model(M.FALLBACK_BERTSCORE_MODEL)
    assert resolved.fallback_reason is None and resolved.num_layers == 6
    assert M._model_layers("roberta-large", "unused") == 17  # bert-score's tuned layer


def test_empty_answers_score_zero_without_the_model():
    model = M.BertScoreModel("fake/model")
    model._load = lambda: pytest.fail("no model should load when every pair has an empty side")
    assert M.BertScoreModel.score(model, ["", "  "], ["ref", ""]).tolist() == [0.0, 0.0]


# ---- latency ----------------------------------------------------------------------------------


def test_latency_summary():
    summary = M.latency_summary([{"retrieve": 0.1, "generate": 1.0}, {"retrieve": 0.3, "generate": 2.0, "total": 2.5}, {"retrieve": 0.2, "generate": 3.0}])
    assert summary["n"] == 3
    assert summary["p50_s"] == pytest.approx(2.5)  # totals 1.1, 2.5, 3.2
    assert summary["mean_s"] == pytest.approx((1.1 + 2.5 + 3.2) / 3)
    assert summary["stages"]["retrieve"]["p50_s"] == pytest.approx(0.2)
    assert "total" not in summary["stages"]
    with pytest.raises(ValueError):
        M.latency_summary([])


def test_paired_mean_test_bootstraps_the_difference_of_means():
    a, b = [1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]
    test = R.paired_mean_test(a, b, samples=300, seed=3)
    assert test["diff"] == pytest.approx(0.375)
    expected = R.paired_bootstrap_test(4, lambda idx: sum(a[i] for i in idx) / len(idx), lambda idx: sum(b[i] for i in idx) / len(idx), samples=300, seed=3)
    assert test["ci95_low"] == pytest.approx(expected["ci95_low"]) and test["ci95_high"] == pytest.approx(expected["ci95_high"])
    assert 0.0 <= test["ci95_low"] <= 0.375 <= test["ci95_high"]  # a is never below b
    with pytest.raises(ValueError, match="one score per question"):
        R.paired_mean_test(a, b[:3])
