"""Log filters for third-party messages that do not concern ragft."""

from __future__ import annotations

import functools
import logging


class DropMessages:
    """A logging filter that drops records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@functools.cache
def quiet_library_warnings() -> None:
    """Called before a model loads: torchao (imported by transformers when it loads a model, and by
    the torch-int8 encoders) warns at import that a CPU build cannot load its CUDA kernels nor find
    Triton, and torch warns about enum registrations; ragft uses only torchao's CPU quantizer."""
    logging.getLogger("torchao").addFilter(DropMessages("Failed to load"))
    logging.getLogger("torchao.kernel.intmm").addFilter(DropMessages("Detected no triton"))
    logging.getLogger("torch.utils._pytree").addFilter(DropMessages("is an Enum subclass and is now natively supported"))
