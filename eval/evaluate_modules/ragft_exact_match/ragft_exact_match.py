"""ragft exact match: lower-cased and stripped, and the SQuAD-normalized variant.

    import evaluate
    evaluate.load("eval/evaluate_modules/ragft_exact_match").compute(predictions=[...], references=[...])
"""

import evaluate

from eval.evaluate_modules import text_pair_info

from eval.metrics import exact_match, exact_match_squad

_DESCRIPTION = "Exact match after lower-casing and stripping; and after SQuAD normalization (punctuation, articles, spaces)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): one reference answer per prediction.
Returns:
    exact_match, exact_match_squad (float): share of exact matches.
    exact_match_per_question, exact_match_squad_per_question (list of float): 1.0 or 0.0 per pair.
"""
_CITATION = "Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016."


class RagftExactMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        plain = [exact_match(p, r) for p, r in zip(predictions, references)]
        squad = [exact_match_squad(p, r) for p, r in zip(predictions, references)]
        n = max(len(plain), 1)
        return {
            "exact_match": sum(plain) / n,
            "exact_match_squad": sum(squad) / n,
            "exact_match_per_question": plain,
            "exact_match_squad_per_question": squad,
        }
