"""One export, whichever the runtime: the fp32 model loaded from safetensors with the attention
both runtimes trace, wrapped to take its inputs by position, handed to the runtime's quantizer
(pipeline.int8.onnx_export or pipeline.int8.torch_export), the tokenizer saved beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.int8.onnx_export import _quantize_onnx
from pipeline.int8.settings import _ATTENTION, _MODEL_FILE, CROSS_ENCODER, INDUCTOR, Int8ExportError, Int8Settings
from pipeline.int8.source import _max_length, _pooling_modes
from pipeline.int8.torch_export import _quantize_inductor
from pipeline.logs import quiet_library_warnings
from pipeline.models.safety import safetensors_flag


def _export(source: Path, kind: str, settings: Int8Settings, out: Path, *, allow_pickle: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Write out/model.onnx or out/model.pt2 (quantized) and the tokenizer; return facts for ragft_int8.json."""
    quiet_library_warnings()
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    model_config = AutoConfig.from_pretrained(source)
    facts: dict[str, Any] = {}
    if kind == CROSS_ENCODER:
        architectures = list(getattr(model_config, "architectures", None) or [])
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise Int8ExportError(
                f"{source} is not a cross-encoder (architectures={architectures}, no sequence-classification head): a fresh head would be "
                "random and differ on every export. Fix: train one with `python -m finetune.reranker`, or --set rerank.backend=torch"
            )
        facts["num_labels"] = int(model_config.num_labels)
        loader, output = AutoModelForSequenceClassification, "logits"
    else:
        facts["pooling"] = list(_pooling_modes(source))
        st_config = source / "sentence_bert_config.json"
        facts["do_lower_case"] = bool(st_config.is_file() and json.loads(st_config.read_text(encoding="utf-8")).get("do_lower_case"))
        loader, output = AutoModel, "last_hidden_state"
    tokenizer = AutoTokenizer.from_pretrained(source)
    facts["max_length"] = _max_length(source, tokenizer, model_config, kind)
    model = loader.from_pretrained(source, use_safetensors=safetensors_flag(allow_pickle), attn_implementation=_ATTENTION).eval()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class Wrapped(torch.nn.Module):
        # keyword arguments, because transformers' forward signatures change order between versions
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return getattr(self.model(**dict(zip(names, inputs))), output)

    wrapped = Wrapped().eval()
    started = time.perf_counter()
    if settings.runtime == INDUCTOR:
        facts.update(_quantize_inductor(wrapped, names, tokenizer, kind, facts["max_length"], out, keep_fp32=settings.keep_fp32, source=source, log=log))
    else:
        facts.update(_quantize_onnx(wrapped, names, output, tokenizer, kind, settings, out, source=source, log=log))
    tokenizer.save_pretrained(out)
    facts.update(inputs=names, output=output, export_seconds=round(time.perf_counter() - started, 1))
    model_file = out / _MODEL_FILE[settings.runtime]
    log(f"quantized to int8 in {facts['export_seconds']} s -> {out.name}/{model_file.name} ({model_file.stat().st_size / 1e6:.1f} MB)")
    return facts

