"""ragft BLEU-4: corpus BLEU with sacrebleu defaults (13a tokenizer, exp smoothing), 0-1 scale.

    import evaluate
    evaluate.load("eval/evaluate_modules/ragft_bleu").compute(predictions=[...], references=[...])

Returns `bleu4` and `bleu4_statistics`: per-question sufficient statistics (hypothesis length,
reference length, 1-4-gram matches, 1-4-gram totals) whose column sums give the corpus score,
so that a bootstrap can recompute corpus BLEU on every resample without re-tokenizing.
"""

import evaluate

from eval.evaluate_modules import text_pair_info

from eval.metrics import bleu_from_statistics, bleu_statistics

_DESCRIPTION = "Corpus BLEU-4 (sacrebleu 13a tokenizer, exp smoothing) on a 0-1 scale, one reference per prediction."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): one reference answer per prediction.
Returns:
    bleu4 (float): corpus BLEU-4 / 100.
    bleu4_statistics (list of list of int): per-question [sys_len, ref_len, correct1-4, total1-4].
"""
_CITATION = "Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018."


class RagftBleu(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        stats = bleu_statistics(predictions, references)
        return {"bleu4": bleu_from_statistics(stats.sum(axis=0)), "bleu4_statistics": stats.tolist()}
