"""Where and how fast weights run: the device and dtype a setting resolves to, torch's CPU
threads, the CPU's bfloat16 probe, and bf16 linear weights prepacked for oneDNN."""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

from pipeline.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# oneDNN chooses a packed weight's blocked layout for this many rows per call: one decoding step
# of a batch of 16 (generator.batch_size), where the saving lies; prefill's thousands of rows ran
# as fast with any hint (one-off test on 2 EPYC cores)
PACK_ROWS_HINT = 16


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; set generator.device=cpu or auto")
    return device


def resolve_dtype(name: str, device: str) -> Any:
    """`generator.torch_dtype` -> torch dtype; auto is bfloat16 on CUDA, float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ModelLoadError(f"generator.torch_dtype={name!r} is not one of auto, {', '.join(table)}")
    return table[name]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere torch
    emulates bf16 matmuls through float32, so mixed precision only adds conversions."""
    import torch

    found = getattr(torch.cpu, "get_capabilities", dict)()  # a torch without the probe: no, so float32
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def apply_cpu_threads(threads: Optional[int], device: str = "cpu") -> None:
    """Set torch's CPU thread count (process-wide) when running on CPU and a count is given."""
    if threads is None or resolve_device(device) != "cpu":
        return
    import torch

    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _packed_linear_class() -> Optional[type]:
    """`torch.nn.Linear` whose bf16 weight is also kept reordered, once, in oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing pass does), so an
    inference matmul does not re-layout the weight on every call; None when this torch build has
    no such ops or they do not reproduce `F.linear` (the model then stays as it is)."""
    import torch

    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        x, w, b = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(5, 8, dtype=torch.bfloat16), torch.randn(5, dtype=torch.bfloat16)
        packed = ops._linear_pointwise(x, ops._reorder_linear_weight(w, PACK_ROWS_HINT), b, "none", [], "")
        if not torch.equal(packed, torch.nn.functional.linear(x, w, b)):
            return None
    except (AttributeError, RuntimeError) as exc:
        logger.info("linear weight prepacking is off: this torch build cannot run it (%s)", exc)
        return None

    class PackedLinear(torch.nn.Linear):
        # A subclass, so that PEFT still sees an nn.Linear when it wraps this layer in a LoRA one.
        def pack(self) -> None:
            self._packed_weight = ops._reorder_linear_weight(self.weight.detach(), PACK_ROWS_HINT)
            self._packed_from = (self.weight.data_ptr(), self.weight._version)

        def forward(self, x: Any) -> Any:
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return torch.nn.functional.linear(x, self.weight, self.bias)  # the packed op has no autograd
            if self._packed_from != (self.weight.data_ptr(), self.weight._version):
                self.pack()  # the weight was replaced or changed in place since it was packed
            return ops._linear_pointwise(x, self._packed_weight, self.bias, "none", [], "")

    return PackedLinear


def prepack_linear_weights(model: Any) -> int:
    """Swap (in place) every bfloat16 `nn.Linear` on the CPU, the LM head included, for one that
    multiplies with a weight prepacked for oneDNN; returns how many were swapped (0 when the
    torch build cannot). Exactly the same outputs: on SmolLM2-135M bf16, 32 of 32 greedy
    with-context answers were identical and the batch-16 generation 1.1-1.2x faster on 2 AMD EPYC
    cores (decoding multiplies 16 rows at a time, where the per-call re-layout of the weight was a
    third of a matmul's time; docs/experiments.md, "Generator"). Pack after merging adapters: PEFT's
    unsafe merge (`weight.data += delta`) changes a weight where no check can see it.

    The packed copies come on top of the weights: when they would take more than half of the
    memory still available (a 7B model in bf16 on a laptop), nothing is packed and a warning says
    so, rather than risking the process."""
    import torch

    packed_class = _packed_linear_class()
    if packed_class is None:
        return 0
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"]
    needed = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    available = available_memory_bytes()
    if available is not None and needed > available / 2:
        logger.warning(
            "not prepacking the LM's linear weights: their packed copies need %.1f GB and %.1f GB of memory is available. "
            "Generation runs unpacked (slower on a CPU, the same answers); set generator.prepack_weights=false to silence this",
            needed / 1e9, available / 1e9,
        )
        return 0
    for module in layers:
        module.__class__ = packed_class
        module.pack()
    return len(layers)


def speed_up_cpu_inference(model: Any, *, prepack: bool) -> None:
    """What generator.prepack_weights does to a loaded model, in place: (bf16 CPU layers) weights
    prepacked for oneDNN, else nothing."""
    if prepack:
        prepack_linear_weights(model)


def available_memory_bytes() -> Optional[int]:
    """Memory the OS can still give this process (psutil, which accelerate, peft and trl already
    require), None where it cannot tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, RuntimeError):
        return None
