"""The onnxruntime runtime's export: `torch.onnx.export` (the TorchScript exporter, dynamic batch
and sequence axes), checked against torch on a batch of another shape (tracing can freeze a
shape), then onnxruntime's `quantize_dynamic`: int8 weights, one scale per output channel; the
activations are quantized to uint8 at run time, one scale per tensor and batch. That last point
means a text's vector depends very slightly on the texts it is batched with (their padding and
ranges): docs/data-and-knowledge-base.md, "int8 and bf16 encoders"."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, Callable

from pipeline.int8.settings import ONNX_NAME, Int8ExportError, Int8Settings
from pipeline.int8.source import _sample_batch
from pipeline.logs import DropMessages


def _quantize_onnx(wrapped: Any, names: list[str], output: str, tokenizer: Any, kind: str, settings: Int8Settings, out: Path, *, source: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """out/model.onnx: the TorchScript export, checked against torch, then quantize_dynamic."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = out / "model-fp32.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, output]}
    if output == "logits":
        axes[output] = {0: "batch"}
    sample = _sample_batch(tokenizer, kind, longer=False)
    log(f"exporting {source} ({kind}) to ONNX ...")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings; the check below is what counts
        torch.onnx.export(wrapped, tuple(sample[n] for n in names), str(fp32), input_names=names, output_names=[output], dynamic_axes=axes, opset_version=settings.opset, do_constant_folding=True, dynamo=False)
    # Tracing records one path through Python control flow: run the fp32 graph on a batch of
    # another size and padding and compare with torch, so a frozen shape fails here, not in use.
    probe = _sample_batch(tokenizer, kind, longer=True)
    with torch.no_grad():
        expected = wrapped(*(probe[n] for n in names)).numpy()
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: probe[n].numpy().astype(np.int64) for n in names})[0]
    mask = probe["attention_mask"].numpy()[..., None] if output == "last_hidden_state" else 1.0
    error = float(np.max(np.abs((got - expected) * mask)))
    if not np.isfinite(error) or error > 1e-3:
        raise Int8ExportError(f"the ONNX export of {source} differs from torch by {error:.3g} on a probe batch (tracing froze a shape?). Fix: --set index.backend=torch / rerank.backend=torch for this model")
    del session
    exclude = [n.name for n in _graph_nodes(fp32) if any(re.search(p, n.name) for p in settings.keep_fp32)]
    root = logging.getLogger()
    # quantize_dynamic logs on the root logger that the model was not "pre-processed" (shape
    # inference): the export already carries its shapes, and the advice would only alarm
    quiet = DropMessages("pre-processing before quantization")
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            str(fp32),
            str(out / ONNX_NAME),
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            op_types_to_quantize=list(settings.op_types),
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": settings.matmul_const_b_only},
        )
    finally:
        root.removeFilter(quiet)
    fp32.unlink()
    return {"fp32_check_max_abs_diff": error, "fp32_nodes": len(exclude)}



def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)
