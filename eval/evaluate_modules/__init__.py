"""HF `evaluate` modules defined by ragft, loaded from their local folders (offline):

    import evaluate
    bleu = evaluate.load("eval/evaluate_modules/ragft_bleu")
    bleu.compute(predictions=["a b c d"], references=["a b c d"])

`eval.metrics.load_lexical_metrics()` combines all of them with `evaluate.combine`. Each module is a
thin wrapper over the functions in `eval.metrics`, which hold the (tested) definitions; each also
returns per-question values, which the bootstrap in `eval.metrics` resamples.
"""


def text_pair_info(description: str, citation: str, inputs_description: str):
    """The MetricInfo every ragft module shares: one string prediction and one string reference."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    )
