"""Supply-chain checks on what a config asks ragft to load (the `security` section).

Loaders read safetensors only, unless `security.allow_pickle_weights` opts in to pickle files
(which can run code when unpickled); they never pass `trust_remote_code=True` unless
`generator.trust_remote_code` asks; and a local model or adapter path named by a config must lie
inside `security.model_dirs` (default: the profile's `run_dir`, plus the folders in
$RAGFT_MODEL_DIRS), else `check_model_source` refuses it before anything is read, unless
`security.allow_any_model_path` is set. A config copied from elsewhere therefore cannot point
ragft at weights planted in an arbitrary folder (docs/operations.md, "Safe loading").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pipeline.config import Config
from pipeline.models.errors import ModelSourceRefusedError
from pipeline.models.hub import _looks_like_path

MODEL_DIRS_ENV = "RAGFT_MODEL_DIRS"


def trusted_model_dirs(config: Config) -> list[Path]:
    """`security.model_dirs` plus the folders of $RAGFT_MODEL_DIRS, absolute and symlink-free."""
    extra = os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep)
    return [Path(d).expanduser().resolve() for d in [*config.security.model_dirs, *extra] if d.strip()]


def check_model_source(config: Config, reference: Optional[str], key: str) -> Optional[str]:
    """Return `reference` unchanged when `config.security` lets ragft load it; refuse a local path
    outside the trusted model folders. Hub ids pass: they load through the Hugging Face cache (or
    the hub) by name, never from a folder the config chose. Symlinks are resolved first, so a link
    inside a trusted folder that points outside it is refused too."""
    if not reference or config.security.allow_any_model_path or not _looks_like_path(reference):
        return reference
    path = Path(reference).expanduser().resolve()
    trusted = trusted_model_dirs(config)
    if any(path == folder or folder in path.parents for folder in trusted):
        return reference
    listed = ", ".join(str(folder) for folder in trusted) or "none"
    raise ModelSourceRefusedError(
        f"{key}={reference!r} resolves to {path}, outside the folders models may be loaded from ({listed}). "
        f"Fix: keep the model under one of them, add its folder (--set 'security.model_dirs=[{{run_dir}}, {path.parent}]' "
        f"or {MODEL_DIRS_ENV}={path.parent}), or --set security.allow_any_model_path=true if you trust every path this config names."
    )


def safetensors_flag(allow_pickle: bool) -> Optional[bool]:
    """`use_safetensors` for transformers / peft loaders: True refuses pickle files; None (with the
    opt-in) still prefers safetensors and falls back to pickle only when a model ships no safetensors."""
    return None if allow_pickle else True


def require_safetensors(path: str, what: str, *, allow_pickle: bool = False) -> None:
    """For loaders that call `from_pretrained` themselves (bert-score): refuse a local folder that
    holds no safetensors file unless pickle weights are allowed. Hub ids left unresolved are
    downloaded by the library itself and are not checked here."""
    folder = Path(path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    raise ModelSourceRefusedError(
        f"{what} at {folder} has no .safetensors weights; only safetensors are read. Fix: convert them "
        "(`model.save_pretrained(folder, safe_serialization=True)`) or, for a source you trust, --set security.allow_pickle_weights=true"
    )


def pickle_refused_hint(exc: Exception) -> str:
    """The fix to append to a loader's error when it failed because only safetensors are read."""
    text = str(exc)
    if "safetensors" in text or ".bin" in text or "pytorch_model" in text:
        return " Only safetensors weights are read: convert the weights (`model.save_pretrained(folder, safe_serialization=True)`) or, for a source you trust, --set security.allow_pickle_weights=true."
    return ""
