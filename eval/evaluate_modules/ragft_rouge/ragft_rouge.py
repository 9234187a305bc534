"""ragft ROUGE-L: mean F1 of `rouge_score` without stemmer, plus per-question values.

    import evaluate
    evaluate.load("eval/evaluate_modules/ragft_rouge").compute(predictions=[...], references=[...])

Unlike the hub's "rouge" module, the aggregate is the plain mean (not a bootstrap estimate), so
it is deterministic; intervals come from `eval.metrics`' bootstrap over `rougeL_per_question`.
"""

import evaluate

from eval.evaluate_modules import text_pair_info

from eval.metrics import rouge_l_f1

_DESCRIPTION = "Mean ROUGE-L F1 (rouge_score, no stemmer), one reference per prediction."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): one reference answer per prediction.
Returns:
    rougeL (float): mean ROUGE-L F1.
    rougeL_per_question (list of float): ROUGE-L F1 of each pair.
"""
_CITATION = "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004."


class RagftRouge(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        values = rouge_l_f1(predictions, references)
        return {"rougeL": sum(values) / len(values) if values else 0.0, "rougeL_per_question": values}
