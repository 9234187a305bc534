"""BERTScore with the real MiniLM weights against an independent implementation of its definition."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval import metrics as M

pytestmark = pytest.mark.realweights

PAIRS = [
    ("A B-tree keeps keys sorted in wide nodes.", "A balanced tree with many keys per node, kept sorted."),
    ("Use a hash map to count items.", "Count occurrences with a dictionary."),
    ("The process is killed.", "The process is killed."),
]


@pytest.fixture(scope="module")
def minilm_scorer():
    return M.BertScoreModel(M.FALLBACK_BERTSCORE_MODEL, batch_size=16, device="cpu", allow_fallback=False)


def _reference_bertscore_f1(prediction: str, reference: str) -> float:
    """BERTScore F1 from its definition (Zhang et al. 2020): layer-6 token embeddings, cosine,
    greedy matching, no idf, no rescale. As in the authors' code, [CLS]/[SEP] are not averaged
    over (their weight is 0) but remain candidates of the greedy match on the other side."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipeline.models import resolve_model

    path = resolve_model(M.FALLBACK_BERTSCORE_MODEL)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(text):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            states = model(**encoded, output_hidden_states=True).hidden_states[6][0]
        return torch.nn.functional.normalize(states, dim=-1)

    similarity = embed(prediction) @ embed(reference).T
    precision = similarity[1:-1, :].max(dim=1).values.mean().item()  # prediction tokens, no [CLS]/[SEP]
    recall = similarity[:, 1:-1].max(dim=0).values.mean().item()
    return 2 * precision * recall / (precision + recall)


def test_minilm_bertscore_matches_its_definition(minilm_scorer):
    predictions, references = zip(*PAIRS)
    got = minilm_scorer.score(list(predictions), list(references))
    expected = [_reference_bertscore_f1(p, r) for p, r in PAIRS]
    assert got == pytest.approx(expected, abs=1e-4)
    assert got[2] == pytest.approx(1.0, abs=1e-4)  # identical texts
    assert minilm_scorer.info() == {
        "model": M.FALLBACK_BERTSCORE_MODEL, "layer": 6, "requested": M.FALLBACK_BERTSCORE_MODEL,
        "fallback_reason": None, "rescale_with_baseline": False, "idf": False,
    }


def test_seed_subset_with_bertscore(seed_dir, minilm_scorer):
    """Every metric on a 20-question subset of a seed file, BERTScore included (fast on CPU)."""
    rows = [json.loads(line) for line in (seed_dir / "results" / "finetuned_test.jsonl").read_text().splitlines()]
    # 16 answered questions and the first 4 the model left unanswered (empty prediction)
    rows = [r for r in rows if r["prediction"].strip()][:16] + [r for r in rows if not r["prediction"].strip()][:4]
    predictions, references = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    scores = M.compute_answer_scores(predictions, references, bertscore=minilm_scorer)
    result = scores.summary(samples=200)
    assert result["model_for_bertscore"] == M.FALLBACK_BERTSCORE_MODEL
    per_pair = scores.per_question["bertscore_f1"]
    empty = [i for i, p in enumerate(predictions) if not p.strip()]
    assert len(empty) == 4 and all(per_pair[i] == 0.0 for i in empty)  # bert-score's rule for empty text
    assert all(0.1 < per_pair[i] < 1.0 for i in range(len(predictions)) if i not in empty)
    assert result["bertscore_f1"] == pytest.approx(float(np.mean(per_pair)))
    low, high = result["ci95"]["bertscore_f1"]
    assert low <= result["bertscore_f1"] <= high and high - low > 0.01
