"""What the export reads from a model folder: the files whose digest keys the cache, the
bi-encoder's pooling (as sentence-transformers reads it), the truncation length the torch path
uses, and the small padded batches that trace the export and check it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.int8.settings import CROSS_ENCODER, EMBEDDING, Int8ExportError
from pipeline.models.safety import require_safetensors

logger = logging.getLogger(__name__)

# Files of a model folder that the export or the runtime reads: a change to any forces a new export.
_SOURCE_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "added_tokens.json", "modules.json", "sentence_bert_config.json",
)
_POOLING_MODES = {"cls", "mean", "max", "mean_sqrt_len_tokens"}
# legacy pooling keys, in the order sentence-transformers concatenates them
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# sentence-transformers modules an int8 bi-encoder can reproduce (Normalize is applied anyway:
# HuggingFaceEmbedding normalises every vector)
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def _pooling_dir(source: Path) -> Optional[Path]:
    modules = source / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("Pooling"):
            return source / module.get("path", "")
    return None


def source_files(source: Path, kind: str, allow_pickle: bool = False) -> list[Path]:
    """Every file of `source` that the export or the runtime reads."""
    require_safetensors(str(source), f"the {kind} model", allow_pickle=allow_pickle)
    weights = sorted(source.glob("*.safetensors")) or (sorted(source.glob("pytorch_model*.bin")) if allow_pickle else [])
    files = [source / name for name in _SOURCE_FILES if (source / name).is_file()]
    pooling = _pooling_dir(source) if kind == EMBEDDING else None
    if pooling is not None and (pooling / "config.json").is_file():
        files.append(pooling / "config.json")
    return weights + files



def _pooling_modes(source: Path) -> tuple[str, ...]:
    """The bi-encoder's pooling, as sentence-transformers reads it; mean when the folder has no
    sentence-transformers modules (what SentenceTransformer itself falls back to)."""
    modules_path = source / "modules.json"
    if not modules_path.is_file():
        return ("mean",)
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    unsupported = [m.get("type", "?") for m in modules if not str(m.get("type", "")).endswith(_SUPPORTED_MODULES)]
    if unsupported:
        raise Int8ExportError(
            f"the embedder at {source} has sentence-transformers modules {unsupported} that the int8 path does not reproduce "
            f"(it runs {', '.join(_SUPPORTED_MODULES)} only). Fix: --set index.backend=torch for this model"
        )
    pooling = _pooling_dir(source)
    config_path = pooling / "config.json" if pooling is not None else None
    if config_path is None or not config_path.is_file():
        return ("mean",)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING.items() if config.get(key))
    bad = [m for m in modes if m not in _POOLING_MODES]
    if not modes or bad:
        raise Int8ExportError(
            f"{config_path}: pooling {list(modes) or 'none'} is not supported by the int8 path (it does {', '.join(sorted(_POOLING_MODES))}). "
            "Fix: --set index.backend=torch for this model"
        )
    if config.get("include_prompt") is False:
        logger.info("%s: include_prompt=false has no effect here: ragft embeds without prompts", config_path)
    return modes


def _max_length(source: Path, tokenizer: Any, model_config: Any, kind: str) -> int:
    """The truncation length the torch path uses when none is given: sentence-transformers'
    max_seq_length for a bi-encoder, else the tokenizer's, capped at the position embeddings."""
    positions = getattr(model_config, "max_position_embeddings", None) or 512
    st_config = source / "sentence_bert_config.json"
    if kind == EMBEDDING and st_config.is_file():
        value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    length = getattr(tokenizer, "model_max_length", None) or positions
    return int(min(length, positions))


def _sample_batch(tokenizer: Any, kind: str, *, longer: bool) -> dict[str, Any]:
    """A padded batch: for tracing (2 rows) and, of another shape, for checking the export."""
    first = ["What is a B-tree?", "How does TCP slow start grow the congestion window after a loss?"]
    second = ["A balanced search tree.", "It doubles the window every round trip until the threshold, then grows it linearly."]
    if longer:
        first, second = first * 2 + ["Why?"], second * 2 + ["Because a much longer passage than the others pads the rest of this batch " * 3]
    if kind == CROSS_ENCODER:
        return tokenizer(first, second, padding=True, truncation=True, return_tensors="pt")
    return tokenizer([f"{a} {b}" for a, b in zip(first, second)], padding=True, truncation=True, return_tensors="pt")

