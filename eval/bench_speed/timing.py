"""Interleaved timing of the encoders: texts/s of embedders and pairs/s of cross-encoders on the same
inputs, each backend once per round in turn, so a neighbour's load hits all alike; and the
token-ordered torch references that tell how much of an int8 speed-up is its batching."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


def interleaved_rates(works: Mapping[str, Callable[[], Any]], items: int, rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best items/s of each work over `rounds` rounds that run every work once in turn (a
    neighbour's load hits all alike), and what each work returned in its last round (after the
    caller's warm-up)."""
    rates: dict[str, float] = {name: 0.0 for name in works}
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, work in works.items():
            started = time.perf_counter()
            outputs[name] = work()
            rates[name] = max(rates[name], items / (time.perf_counter() - started))
    return rates, outputs


class TokenOrderedEmbedder:
    """A torch embedder (HuggingFaceEmbedding) handed its texts in token-count order, the order
    the int8 path cuts its batches in (sentence-transformers orders by characters): the speed
    benchmarks time it beside the plain one, so that an int8 speed-up is not read as int8's alone
    when part of it is the batching."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.embed_batch_size = embedder.embed_batch_size

    def get_text_embedding_batch(self, texts: Sequence[str], **kwargs: Any) -> list[list[float]]:
        from pipeline.int8 import in_given_order, longest_first

        model = self.embedder._model  # the SentenceTransformer inside HuggingFaceEmbedding
        order = longest_first([len(ids) for ids in model.tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)["input_ids"]])
        return in_given_order(order, self.embedder.get_text_embedding_batch([texts[i] for i in order], **kwargs))


class TokenOrderedCrossEncoder:
    """A sentence-transformers CrossEncoder fed batches cut in token-count order (see
    TokenOrderedEmbedder); one-label models, as ragft's rerankers are."""

    def __init__(self, cross_encoder: Any):
        self.cross_encoder = cross_encoder

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, **kwargs: Any) -> Any:
        import numpy as np

        from pipeline.int8 import longest_first

        pairs = list(pairs)
        encoded = self.cross_encoder.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=self.cross_encoder.max_length)
        order = longest_first([len(ids) for ids in encoded["input_ids"]])
        scores = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores[chunk] = self.cross_encoder.predict([pairs[i] for i in chunk], batch_size=batch_size, **kwargs)
        return scores


def random_head_cross_encoder(encoder: str, out: Path) -> Path:
    """`encoder` with a fresh one-logit head (seed 0), saved as a cross-encoder folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=1)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(out)
    return out


def embedder_speed(fp32: Any, int8: Any, texts: list[str], rounds: int, *, others: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """texts/s of two LlamaIndex embedders on the same texts (their own embed_batch_size), best of
    `rounds` interleaved rounds after a one-batch warm-up, and cos(fp32, int8) of the vectors;
    each of `others` (name -> embedder, e.g. bf16) adds NAME_texts_per_s and NAME_cos_mean/min."""
    import numpy as np

    embedders = {"torch": fp32, "int8": int8, **(others or {})}
    for embedder in embedders.values():
        embedder.get_text_embedding_batch(texts[:64])  # warm-up
    rates, vectors = interleaved_rates({name: (lambda e=e: e.get_text_embedding_batch(texts)) for name, e in embedders.items()}, len(texts), rounds)
    cos = {name: (np.asarray(vectors["torch"]) * np.asarray(vectors[name])).sum(axis=1) for name in embedders if name != "torch"}
    result = {
        "texts": len(texts), "batch": int(fp32.embed_batch_size),
        "torch_texts_per_s": rates["torch"], "int8_texts_per_s": rates["int8"],
        "speedup": rates["int8"] / rates["torch"],
        "cos_mean": float(cos["int8"].mean()), "cos_min": float(cos["int8"].min()),
    }
    for name in others or {}:
        result.update({f"{name}_texts_per_s": rates[name], f"{name}_cos_mean": float(cos[name].mean()), f"{name}_cos_min": float(cos[name].min())})
    return result


def cross_encoder_speed(torch_ce: Any, int8_ce: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int, rounds: int, others: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """(question, passage) pairs/s of a sentence-transformers CrossEncoder and an Int8CrossEncoder
    on the same pairs (logits, `batch_size` per pass), best of `rounds` interleaved rounds after a
    one-batch warm-up; each of `others` (name -> cross-encoder, e.g. bf16) adds NAME_pairs_per_s and
    NAME_logit_corr, the Pearson correlation of its logits with torch fp32's."""
    import numpy as np
    import torch

    identity = torch.nn.Identity()
    pairs = list(pairs)
    models = {"torch": torch_ce, "int8": int8_ce, **(others or {})}
    predict = lambda model, items: model.predict(items, batch_size=batch_size, activation_fn=identity, show_progress_bar=False)  # noqa: E731
    for model in models.values():
        predict(model, pairs[:batch_size])  # warm-up
    rates, logits = interleaved_rates({name: (lambda m=m: predict(m, pairs)) for name, m in models.items()}, len(pairs), rounds)
    result = {"pairs": len(pairs), "batch": batch_size, "torch_pairs_per_s": rates["torch"], "int8_pairs_per_s": rates["int8"], "speedup": rates["int8"] / rates["torch"]}
    for name in others or {}:
        correlation = float(np.corrcoef(np.asarray(logits["torch"], dtype=float).ravel(), np.asarray(logits[name], dtype=float).ravel())[0, 1]) if len(pairs) > 1 else 1.0
        result.update({f"{name}_pairs_per_s": rates[name], f"{name}_logit_corr": correlation})
    return result
