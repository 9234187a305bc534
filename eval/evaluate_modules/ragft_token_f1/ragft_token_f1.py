"""ragft token F1: SQuAD-style bag-of-tokens F1 after SQuAD normalization.

    import evaluate
    evaluate.load("eval/evaluate_modules/ragft_token_f1").compute(predictions=[...], references=[...])
"""

import evaluate

from eval.evaluate_modules import text_pair_info

from eval.metrics import token_f1

_DESCRIPTION = "Mean SQuAD token F1 (normalized whitespace tokens, clipped counts), one reference per prediction."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): one reference answer per prediction.
Returns:
    token_f1 (float): mean token F1.
    token_f1_per_question (list of float): token F1 of each pair.
"""
_CITATION = "Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016."


class RagftTokenF1(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        values = [token_f1(p, r) for p, r in zip(predictions, references)]
        return {"token_f1": sum(values) / len(values) if values else 0.0, "token_f1_per_question": values}
