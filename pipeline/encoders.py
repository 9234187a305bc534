"""The two BERT encoders as their libraries' objects: the dense index's bi-encoder (a LlamaIndex
embedding model) and the cross-encoder reranker (sentence-transformers' `CrossEncoder`), each in
torch (fp32, or bfloat16 weights) or, with `index.backend` / `rerank.backend` = onnx-int8 or
torch-int8, pipeline.int8's int8 encoders (docs/data-and-knowledge-base.md, "int8 and bf16 encoders").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import INT8_BACKENDS, Config
from pipeline.logs import quiet_library_warnings
from pipeline.models.device import resolve_device
from pipeline.models.errors import ModelLoadError
from pipeline.models.hub import resolve_model
from pipeline.models.safety import check_model_source, pickle_refused_hint, safetensors_flag

if TYPE_CHECKING:  # heavy imports stay lazy: `--help` and config errors must be instant
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import SentenceTransformer


def load_sentence_transformer(reference: str, *, device: str = "auto", trust_remote_code: bool = False, allow_pickle: bool = False) -> "SentenceTransformer":
    """A sentence-transformers bi-encoder from a resolved local folder or hub id."""
    quiet_library_warnings()
    from sentence_transformers import SentenceTransformer

    path = resolve_model(reference)  # a miss is ModelNotFoundError, itself an OSError: resolve first
    try:
        return SentenceTransformer(
            path,
            device=resolve_device(device),
            trust_remote_code=trust_remote_code,
            model_kwargs={"use_safetensors": safetensors_flag(allow_pickle)},
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load sentence-transformers model {reference!r}: {exc}.{pickle_refused_hint(exc)}") from None


def load_embedder(config: Config, *, reference: str | None = None) -> "BaseEmbedding":
    """The LlamaIndex embedding model of the dense index (`index.embed_model` by default):
    sentence-transformers in torch (fp32, or bfloat16 weights with `index.backend=torch-bf16`), or with `index.backend=onnx-int8` / `torch-int8` pipeline.int8's
    `Int8Embedding` (exported on first use, cached beside the model or in {run_dir}/int8-cache)."""
    quiet_library_warnings()
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    reference = check_model_source(config, reference or config.index.embed_model, "index.embed_model")
    path = resolve_model(reference)
    if config.index.backend in INT8_BACKENDS:
        if not Path(path).is_dir():  # a hub id left unresolved: only a local folder can be exported
            raise ModelLoadError(f"index.backend={config.index.backend} exports a local model folder, and {reference!r} is not on this machine. Fix: download it first (`huggingface-cli download {reference}`) or --set index.backend=torch")
        from pipeline.int8 import Int8Embedding, Int8Settings  # the int8 embedder is a LlamaIndex class: llama_index loads only for it

        return Int8Embedding(
            model_path=path,
            model_name=reference,
            embed_batch_size=config.index.embed_batch_size,
            cache_dir=str(Path(config.run_dir) / "int8-cache"),
            settings=Int8Settings(runtime=INT8_BACKENDS[config.index.backend]),
            allow_pickle_weights=config.security.allow_pickle_weights,
        )
    model_kwargs: dict[str, Any] = {"use_safetensors": safetensors_flag(config.security.allow_pickle_weights)}
    if config.index.backend == "torch-bf16":
        import torch

        model_kwargs["dtype"] = torch.bfloat16
    try:
        return HuggingFaceEmbedding(
            model_name=path,
            embed_batch_size=config.index.embed_batch_size,
            device=resolve_device("cpu" if config.generator.device == "cpu" else "auto"),
            trust_remote_code=config.generator.trust_remote_code,
            model_kwargs=model_kwargs,
            show_progress_bar=False,
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load the embedder {reference!r}: {exc}.{pickle_refused_hint(exc)}") from None




def load_cross_encoder(
    reference: str,
    *,
    device: str = "auto",
    max_length: int | None = None,
    num_labels: int | None = None,
    backend: str = "torch",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    int8_cache_dir: str | None = None,
) -> Any:
    """A sentence-transformers `CrossEncoder` from a resolved local folder or hub id.

    `num_labels=1` on an encoder checkpoint that has no classification head (e.g. the bundled
    all-MiniLM-L6-v2) adds a fresh one-logit head: the starting point of `finetune.reranker`.
    `backend="torch-bf16"` loads the weights in bfloat16. `backend="onnx-int8"` (or `"torch-int8"`,
    the inductor runtime) returns pipeline.int8's `Int8CrossEncoder`, whose
    `predict` is CrossEncoder's (exported and quantized on first use, cached in the model folder or,
    when that is read-only, in `int8_cache_dir`); it needs a trained head (num_labels None or 1)."""
    quiet_library_warnings()
    if backend in INT8_BACKENDS:
        path = resolve_model(reference)
        if not Path(path).is_dir():
            raise ModelLoadError(f"rerank.backend={backend} exports a local model folder, and {reference!r} is not on this machine. Fix: download it first (`huggingface-cli download {reference}`) or --set rerank.backend=torch")
        if num_labels not in (None, 1):
            raise ModelLoadError(f"rerank.backend={backend} scores with the model's own head; num_labels={num_labels!r} cannot be changed. Fix: load it with backend=torch")
        from pipeline.int8 import Int8CrossEncoder, Int8Settings  # llama_index and onnxruntime load only for the int8 backends

        return Int8CrossEncoder(path, max_length=max_length, cache_dir=int8_cache_dir, settings=Int8Settings(runtime=INT8_BACKENDS[backend]), allow_pickle_weights=allow_pickle)
    if backend not in ("torch", "torch-bf16"):
        raise ValueError(f"load_cross_encoder: backend={backend!r} is not one of torch, torch-bf16, {', '.join(INT8_BACKENDS)}")
    from sentence_transformers import CrossEncoder

    model_kwargs: dict[str, Any] = {"use_safetensors": safetensors_flag(allow_pickle)}
    if backend == "torch-bf16":
        import torch

        model_kwargs["dtype"] = torch.bfloat16
    path = resolve_model(reference)
    try:
        return CrossEncoder(
            path,
            device=resolve_device(device),
            max_length=max_length,
            num_labels=num_labels,
            backend="torch",
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load cross-encoder {reference!r}: {exc}.{pickle_refused_hint(exc)}") from None
