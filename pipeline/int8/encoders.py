"""The int8 encoders, with the interfaces of their torch counterparts: `Int8Embedding` pools like
the model's sentence-transformers modules (modules.json, 1_Pooling/config.json: mean pooling for
MiniLM) and L2-normalises, as `HuggingFaceEmbedding` does; `Int8CrossEncoder.predict` returns
what `CrossEncoder.predict` returns (sigmoid for one label unless `activation_fn` says
otherwise), so it replaces it in `CrossEncoderReranker.score_pairs` unchanged. Both are cheap to
build: the export (pipeline.int8.cache) and the runtime load on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from pipeline.int8.cache import ensure_int8
from pipeline.int8.runtime import _open_runtime, _Runtime, in_given_order, longest_first
from pipeline.int8.settings import CROSS_ENCODER, EMBEDDING, Int8ExportError, Int8Settings

if TYPE_CHECKING:
    import numpy as np


def _pool(hidden: "np.ndarray", mask: "np.ndarray", modes: Sequence[str]) -> "np.ndarray":
    """sentence-transformers' Pooling on a padded batch (fp32 sums, as it accumulates)."""
    import numpy as np

    mask_f = mask[..., None].astype(np.float32)
    counts = np.clip(mask_f.sum(axis=1), 1e-9, None)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[np.arange(len(hidden)), mask.argmax(axis=1)])
        elif mode == "max":
            out.append(np.where(mask_f > 0, hidden, -1e9).max(axis=1))
        elif mode == "mean":
            out.append((hidden * mask_f).sum(axis=1) / counts)
        else:  # mean_sqrt_len_tokens
            out.append((hidden * mask_f).sum(axis=1) / np.sqrt(counts))
    return np.concatenate(out, axis=-1)


class Int8Embedding(BaseEmbedding):
    """A sentence-transformers bi-encoder run as int8 ONNX; vectors like `HuggingFaceEmbedding`'s
    (the model's pooling, then L2 normalisation). Cheap to build: export and load on first use."""

    model_path: str = Field(description="Local folder of the sentence-transformers bi-encoder (resolved by pipeline.models.resolve_model).")
    cache_dir: Optional[str] = Field(default=None, description="Where the export goes when the model folder is read-only or package-managed (default $RAGFT_INT8_CACHE or runs/int8-cache).")
    threads: Optional[int] = Field(default=None, gt=0, description="onnxruntime intra-op threads; None: all cores of this process.")
    max_length: Optional[int] = Field(default=None, gt=0, description="Tokens per text; None: the model's max_seq_length (256 for all-MiniLM-L6-v2).")
    normalize: bool = Field(default=True, description="L2-normalise the vectors, as HuggingFaceEmbedding does by default.")
    settings: Int8Settings = Field(default_factory=Int8Settings, description="Export and quantization settings (part of the cache digest).")
    allow_pickle_weights: bool = Field(default=False, description="Export from pickle weights when the model ships no safetensors (security.allow_pickle_weights).")

    _runtime: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", str(data.get("model_path", "")))
        super().__init__(**data)
        if not Path(self.model_path).is_dir():
            raise Int8ExportError(f"Int8Embedding: model_path={self.model_path!r} is not a folder. Fix: pass the folder pipeline.models.resolve_model returns")

    @classmethod
    def class_name(cls) -> str:
        return "Int8Embedding"

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    def load(self) -> "Int8Embedding":
        """Export (when the cache is missing or stale) and open the session now; thread-safe, once."""
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    folder, meta = ensure_int8(self.model_path, EMBEDDING, settings=self.settings, cache_dir=self.cache_dir, allow_pickle=self.allow_pickle_weights)
                    self._runtime = _open_runtime(folder, meta, runtime=self.settings.runtime, threads=self.threads, source=Path(self.model_path).resolve(), kind=EMBEDDING)
        return self

    @property
    def cache_folder(self) -> Path:
        return self.load()._runtime.folder

    def _prepared(self, texts: Sequence[str]) -> tuple[_Runtime, list[str], int]:
        """The runtime, the texts as the model reads them, and the truncation length."""
        runtime = self.load()._runtime
        texts = [str(t) for t in texts]
        if runtime.meta.get("do_lower_case"):
            texts = [t.lower() for t in texts]
        return runtime, texts, self.max_length or int(runtime.meta["max_length"])

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as embedded (truncated at max_length)."""
        if not texts:
            return []
        runtime, texts, max_length = self._prepared(texts)
        return runtime.token_counts(texts, None, max_length)

    def embed(self, texts: Sequence[str], batch_size: Optional[int] = None) -> "np.ndarray":
        """(len(texts), dim) float32 vectors, in batches of `batch_size` (default embed_batch_size)."""
        import numpy as np

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        runtime, texts, max_length = self._prepared(texts)
        vectors: list[Any] = [None] * len(texts)
        for chunk, hidden, mask in runtime.batches(texts, None, max_length, batch_size or self.embed_batch_size):
            pooled = _pool(hidden.astype(np.float32), mask, runtime.meta["pooling"])
            if self.normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            for row, i in zip(pooled, chunk):
                vectors[i] = row
        return np.stack(vectors).astype(np.float32)

    def get_text_embedding_batch(self, texts: List[str], show_progress: bool = False, **kwargs: Any) -> List[List[float]]:
        """LlamaIndex's batching (events, progress, `embed_batch_size` chunks) over the texts
        ordered by token count, the vectors returned in the given order. LlamaIndex cuts its chunks
        in the order it is given and `embed` can sort only within one; ordered first, each chunk
        holds texts of about one length and its batches carry little padding: 512 seed passages
        embedded at 295-356 texts/s against 260-295 unordered (the same order made torch fp32 1.12x
        faster too; one-off measurement; docs/experiments.md, "Encoders and speed"). The texts are
        tokenized twice (here to count, in `embed` to run): 55 ms for 1,264 seed passages. The
        onnxruntime vectors change with the batching (one activation scale per batch): see
        docs/data-and-knowledge-base.md, "int8 and bf16 encoders"."""
        order = longest_first(self.token_counts(texts))
        return in_given_order(order, super().get_text_embedding_batch([texts[i] for i in order], show_progress=show_progress, **kwargs))

    def _get_query_embedding(self, query: str) -> List[float]:
        return self.embed([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self.embed(texts).tolist()


class Int8CrossEncoder:
    """A cross-encoder (a *ForSequenceClassification folder) run as int8 ONNX, with the
    `predict` of sentence-transformers' CrossEncoder. Cheap to build: export and load on first use."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_length: Optional[int] = None,
        threads: Optional[int] = None,
        cache_dir: str | Path | None = None,
        settings: Int8Settings | None = None,
        allow_pickle_weights: bool = False,
    ):
        if not Path(model_path).is_dir():
            raise Int8ExportError(f"Int8CrossEncoder: model_path={str(model_path)!r} is not a folder. Fix: pass the folder pipeline.models.resolve_model returns")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"Int8CrossEncoder: max_length={max_length!r} must be > 0 (or None for the model's own)")
        if threads is not None and threads <= 0:
            raise ValueError(f"Int8CrossEncoder: threads={threads!r} must be > 0 (or None for all cores)")
        self.model_path = str(model_path)
        self.max_length = max_length
        self.threads = threads
        self.cache_dir = cache_dir
        self.settings = settings or Int8Settings()
        self.allow_pickle_weights = allow_pickle_weights
        self._runtime: Optional[_Runtime] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Int8CrossEncoder({self.model_path!r}, max_length={self.max_length}, loaded={self._runtime is not None})"

    def load(self) -> "Int8CrossEncoder":
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    folder, meta = ensure_int8(self.model_path, CROSS_ENCODER, settings=self.settings, cache_dir=self.cache_dir, allow_pickle=self.allow_pickle_weights)
                    self._runtime = _open_runtime(folder, meta, runtime=self.settings.runtime, threads=self.threads, source=Path(self.model_path).resolve(), kind=CROSS_ENCODER)
        return self

    @property
    def cache_folder(self) -> Path:
        return self.load()._runtime.folder

    @property
    def num_labels(self) -> int:
        return int(self.load()._runtime.meta["num_labels"])

    def predict(
        self,
        inputs: Sequence[Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        activation_fn: Optional[Callable] = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **_: Any,
    ) -> Any:
        """Scores of (question, passage) pairs like `CrossEncoder.predict`: shape (n,) for a
        one-logit model, (n, labels) otherwise, a scalar for a single pair. `activation_fn` None
        applies sigmoid to one label (CrossEncoder's default); pass torch.nn.Identity() for logits."""
        import numpy as np

        if batch_size <= 0:
            raise ValueError(f"Int8CrossEncoder.predict: batch_size={batch_size!r} must be > 0")
        single = len(inputs) == 2 and all(isinstance(x, str) for x in inputs)
        pairs = [tuple(inputs)] if single else [tuple(p) for p in inputs]
        bad = next((p for p in pairs if len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"Int8CrossEncoder.predict: every input must be a (question, passage) pair; got {bad!r}")
        runtime = self.load()._runtime
        labels = int(runtime.meta["num_labels"])
        max_length = self.max_length or int(runtime.meta["max_length"])
        logits = np.zeros((len(pairs), labels), dtype=np.float32)
        steps = runtime.batches([a for a, _ in pairs], [b for _, b in pairs], max_length, batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            steps = tqdm(steps, total=runtime.batch_count(len(pairs), batch_size), desc="rerank (int8)", unit="batch")
        for chunk, out, _mask in steps:
            logits[chunk] = out.reshape(len(chunk), labels)
        scores = _activate(logits, activation_fn, apply_softmax)
        if labels == 1:
            scores = scores[:, 0]
        if single:
            scores = scores[0]
        if convert_to_tensor:
            import torch

            return torch.as_tensor(scores)
        return scores if convert_to_numpy else [s for s in scores]


def _activate(logits: "np.ndarray", activation_fn: Optional[Callable], apply_softmax: bool) -> "np.ndarray":
    import numpy as np

    if activation_fn is None:
        scores = 1.0 / (1.0 + np.exp(-logits)) if logits.shape[1] == 1 else logits
    else:
        import torch

        if isinstance(activation_fn, torch.nn.Identity):
            scores = logits
        else:  # any torch callable, as CrossEncoder accepts
            scores = activation_fn(torch.from_numpy(logits)).numpy()
    if apply_softmax and scores.shape[1] > 1:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return scores.astype(np.float32)

