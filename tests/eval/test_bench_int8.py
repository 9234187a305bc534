"""eval/bench_int8.py's token-ordered torch references: the speed benchmarks time torch fp32 fed
batches cut by token count, as the int8 paths cut theirs, so that the batching's share of an int8
speed-up is measured, not folded into int8's."""

from __future__ import annotations

import numpy as np
import torch

from eval.bench_int8 import TokenOrderedCrossEncoder, TokenOrderedEmbedder

# technical text: characters and tokens disagree (an address is short and many tokens)
PAIRS = [("What is GC?", "Garbage collection frees memory that is no longer reachable."), ("Which host?", "127.0.0.1:8080/a_b-c?x=1&y=2"), ("B-tree?", "A balanced tree."), ("TCP?", "Slow start.")]


class Recording:
    """A CrossEncoder whose predict records the batches it is handed."""

    def __init__(self, cross_encoder):
        self.cross_encoder, self.batches = cross_encoder, []
        self.tokenizer, self.max_length = cross_encoder.tokenizer, cross_encoder.max_length

    def predict(self, pairs, batch_size=32, **kwargs):
        self.batches.append(list(pairs))
        return self.cross_encoder.predict(pairs, batch_size=batch_size, **kwargs)


def test_token_ordered_cross_encoder_cuts_batches_by_token_count_and_keeps_each_score(tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    plain = CrossEncoder(str(tiny_cross_encoder_dir), device="cpu", max_length=64)
    recording = Recording(plain)
    scores = TokenOrderedCrossEncoder(recording).predict(PAIRS, batch_size=2, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    counts = {pair: len(plain.tokenizer(*pair)["input_ids"]) for pair in PAIRS}
    fed = [pair for batch in recording.batches for pair in batch]
    assert [len(batch) for batch in recording.batches] == [2, 2] and sorted(fed) == sorted(PAIRS)
    assert [counts[pair] for pair in fed] == sorted(counts.values(), reverse=True)
    assert fed[0] == PAIRS[1]  # the most tokens, though not the most characters
    np.testing.assert_allclose(scores, plain.predict(PAIRS, activation_fn=torch.nn.Identity(), show_progress_bar=False), atol=1e-5)


def test_token_ordered_embedder_hands_texts_by_token_count_and_returns_them_in_the_given_order(tiny_cross_encoder_dir):
    from transformers import AutoTokenizer

    class FakeModel:
        tokenizer, max_seq_length = AutoTokenizer.from_pretrained(tiny_cross_encoder_dir), 64

    class FakeEmbedding:
        embed_batch_size, _model, handed = 2, FakeModel(), []

        def get_text_embedding_batch(self, texts, **kwargs):
            self.handed.append(list(texts))
            return [[float(len(t))] for t in texts]

    texts = [passage for _, passage in PAIRS]
    embedder = FakeEmbedding()
    assert TokenOrderedEmbedder(embedder).get_text_embedding_batch(texts) == [[float(len(t))] for t in texts]
    counts = {t: len(FakeModel.tokenizer(t)["input_ids"]) for t in texts}
    assert [counts[t] for t in embedder.handed[0]] == sorted(counts.values(), reverse=True) and embedder.handed[0][0] == texts[1]
