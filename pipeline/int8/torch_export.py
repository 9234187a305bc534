"""The torch inductor runtime's export (`Int8Settings(runtime="inductor")`, `index.backend` /
`rerank.backend` = torch-int8): `torch.export` of the model (dynamic batch and sequence axes,
checked against torch on a probe batch of another shape), torchao's PT2E `X86InductorQuantizer`
(int8 per-channel weights; activations int8 with STATIC per-tensor scales, calibrated once on
CALIBRATION_FILE, 96 technical question-answer pairs from the demo data, in the forms ragft feeds
each encoder), saved as model.pt2 with `torch.export.save`. Static scales make a text's vector
independent of the texts batched with it, and the outputs are closer to fp32 than the dynamic
onnxruntime path's (docs/experiments.md, "Encoders and speed")."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.int8.settings import CROSS_ENCODER, EMBEDDING, PT2_NAME, Int8ExportError
from pipeline.int8.source import _sample_batch
from pipeline.logs import quiet_library_warnings

# what the inductor runtime's activation scales are calibrated on (see _calibration_batches)
CALIBRATION_FILE = Path(__file__).with_name("calibration.jsonl")


def _torchao() -> Any:
    """torchao with its PT2E modules (their import warnings about a CPU build are dropped first)."""
    quiet_library_warnings()
    try:
        import torchao
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the quantized ops torch.export.load needs
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except ImportError as exc:
        raise Int8ExportError(f"the torch-int8 backend needs torchao ({exc}). Fix: pip install 'torchao>=0.15', or --set index.backend=onnx-int8 / rerank.backend=onnx-int8") from None
    return torchao


def _calibration_batches(tokenizer: Any, kind: str, max_length: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """What the static activation scales are measured on: CALIBRATION_FILE's 96 technical
    question-answer pairs (from the demo data) in every form ragft feeds the encoders: a
    bi-encoder sees questions, answers and knowledge-base nodes ("Question: ...\nAnswer: ..."); a
    cross-encoder a question with its own node, another pair's node and its bare answer. Sorted by
    length and batched as at run time, so the padding is what inference will see."""
    rows = [json.loads(line) for line in CALIBRATION_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    nodes = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    if kind == CROSS_ENCODER:
        items: list[Any] = [(r["question"], passage) for i, r in enumerate(rows) for passage in (nodes[i], nodes[(i + 1) % len(rows)], r["answer"])]
        length = lambda item: len(item[0]) + len(item[1])  # noqa: E731
    else:
        items = [r["question"] for r in rows] + [r["answer"] for r in rows] + nodes
        length = len
    items.sort(key=lambda item: -length(item))
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if kind == CROSS_ENCODER:
            batches.append(tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt"))
        else:
            batches.append(tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    return batches


def _agreement(got: Any, expected: Any, mask: Any) -> float:
    """Cosine of two outputs over the real (unpadded) positions, flattened."""
    import torch

    if mask is not None:
        got, expected = got * mask, expected * mask
    return float(torch.nn.functional.cosine_similarity(got.flatten().double(), expected.flatten().double(), dim=0))


def _quantize_inductor(wrapped: Any, names: list[str], tokenizer: Any, kind: str, max_length: int, out: Path, *, keep_fp32: Sequence[str], source: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """out/model.pt2: torch.export with dynamic batch and sequence axes, torchao's X86 inductor
    quantizer (int8 per-channel weights, static per-tensor activations calibrated on
    _calibration_batches), exported again and saved. Checked on a probe batch of another shape:
    the fp32 program against torch (a frozen shape fails here), the int8 one for agreement."""
    import torch

    _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    log(f"exporting {source} ({kind}) with torch.export and calibrating int8 activations ...")
    sample = _sample_batch(tokenizer, kind, longer=False)
    batch = torch.export.Dim("batch", min=1, max=65536)
    sequence = torch.export.Dim("sequence", min=2, max=max(max_length, 3))
    shapes = tuple({0: batch, 1: sequence} for _ in names)
    args = tuple(sample[n] for n in names)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.export.export(wrapped, args, dynamic_shapes=(shapes,)).module()  # one entry: Wrapped.forward(*inputs)
            # the pooler of a bi-encoder loaded with AutoModel runs but feeds nothing; left in, the
            # quantizer finds a linear layer with no output to annotate
            graph.graph.eliminate_dead_code()
            graph.recompile()
            probe = _sample_batch(tokenizer, kind, longer=True)
            probe_args = tuple(probe[n] for n in names)
            expected = wrapped(*probe_args)
            mask = probe["attention_mask"][..., None] if kind == EMBEDDING else None
            error = float(((graph(*probe_args) - expected) * (1 if mask is None else mask)).abs().max())
            if not error <= 1e-3:
                raise Int8ExportError(f"torch.export of {source} differs from the model by {error:.3g} on a probe batch of another shape. Fix: --set index.backend=onnx-int8 / rerank.backend=onnx-int8 (or torch) for this model")
            quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
            kept = [name for name, module in wrapped.named_modules() if isinstance(module, torch.nn.Linear) and any(re.search(p, name) for p in keep_fp32)]
            for name in kept:
                quantizer.set_module_name_qconfig(name, None)
            prepared = prepare_pt2e(graph, quantizer)
            for calibration in _calibration_batches(tokenizer, kind, max_length):
                prepared(*(calibration[n] for n in names))
            quantized = convert_pt2e(prepared)
            agreement = _agreement(quantized(*probe_args), expected, mask)
            if not agreement >= 0.95:
                raise Int8ExportError(f"the int8 graph of {source} agrees with fp32 at cosine {agreement:.3f} on a probe batch (< 0.95): static activation scales do not suit this model. Fix: --set index.backend=onnx-int8 / rerank.backend=onnx-int8")
            program = torch.export.export(quantized, args, dynamic_shapes=shapes)
    except Int8ExportError:
        raise
    except Exception as exc:  # torch.export / the quantizer raise many classes on models they cannot take
        raise Int8ExportError(f"torch.export or the int8 quantizer cannot take {source} ({exc.__class__.__name__}: {str(exc)[:200]}). Fix: --set index.backend=onnx-int8 / rerank.backend=onnx-int8 for this model") from None
    torch.export.save(program, str(out / PT2_NAME))
    return {"fp32_check_max_abs_diff": error, "int8_probe_cosine": round(agreement, 6), "fp32_modules": kept}

