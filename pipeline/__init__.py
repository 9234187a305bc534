"""ragft pipeline: configuration, data, models, knowledge base, retrieval, generation, engines."""

from __future__ import annotations

import logging
import os
import sys

__version__ = "0.1.0"


def _hide_bitsandbytes_without_cuda() -> None:
    """peft imports bitsandbytes eagerly whenever it is installed, and on a machine without CUDA
    bitsandbytes logs warnings about CPU kernels at import. It is only useful for 4-bit loading on
    CUDA, so on a machine with no NVIDIA driver we make it look absent (`import bitsandbytes` raises
    ImportError, `find_spec` returns None) before anything imports peft or transformers.
    Set RAGFT_ALLOW_BITSANDBYTES=1 to opt out."""
    if "bitsandbytes" in sys.modules or os.environ.get("RAGFT_ALLOW_BITSANDBYTES") == "1":
        return
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"):
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


_hide_bitsandbytes_without_cuda()


class DropMessages:
    """A logging filter that drops records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        self.fragments = fragments

    def filter(self, record: "logging.LogRecord") -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _quiet_torchao_import() -> None:
    """torchao (pipeline/int8.py's torch-int8 backend) is imported by transformers whenever it loads
    a model, and at import it warns that a CPU build cannot load its CUDA/MX kernel libraries nor
    find Triton, and torch warns about its enum registrations: none concerns ragft, which uses its
    CPU PT2E quantizer only. Only those messages are dropped."""
    logging.getLogger("torchao").addFilter(DropMessages("Failed to load"))
    logging.getLogger("torchao.kernel.intmm").addFilter(DropMessages("Detected no triton"))
    logging.getLogger("torch.utils._pytree").addFilter(DropMessages("is an Enum subclass and is now natively supported"))


_quiet_torchao_import()

from pipeline.config import Config, ConfigError, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "build_query_engine", "Components", "SYSTEMS", "SYSTEM_NAMES", "__version__"]


def __getattr__(name: str):
    """The engine API loads on first use, so `import pipeline` (every CLI's first line) stays fast."""
    if name in ("build_query_engine", "Components"):
        from pipeline import engine

        return getattr(engine, name)
    if name in ("SYSTEMS", "SYSTEM_NAMES"):
        from pipeline import systems

        return getattr(systems, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
