"""What an int8 export is: its kind (bi-encoder or cross-encoder), its runtime (onnxruntime or
torch inductor), the file names of its cache folder, and `Int8Settings`, the export and
quantization settings that are part of the cache digest (a change re-exports). The settings (one
scale per output channel, the MatMuls with a weight matrix only) were chosen for the vectors'
agreement with fp32 (docs/experiments.md, "Encoders and speed").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import UserFacingError
from pipeline.models.errors import ModelLoadError

FORMAT = "ragft-int8/1"
CACHE_DIRNAME = ".ragft-int8"
META_NAME = "ragft_int8.json"
ONNX_NAME = "model.onnx"
PT2_NAME = "model.pt2"
ONNXRUNTIME = "onnxruntime"
INDUCTOR = "inductor"
Runtime = Literal["onnxruntime", "inductor"]
# the quantized file of each runtime, and the key of its sha256 in ragft_int8.json
_MODEL_FILE = {ONNXRUNTIME: ONNX_NAME, INDUCTOR: PT2_NAME}
_SHA_KEY = {ONNXRUNTIME: "onnx_sha256", INDUCTOR: "pt2_sha256"}
# The attention both runtimes trace: for onnxruntime the plain MatMul/Softmax pattern its fusions
# know; for inductor too, which fuses the mask, softmax and scaling around two bmm calls where
# torch's CPU flash attention took 27% of the int8 cross-encoder's time on 20 rows of ~70 tokens
# (torch.profiler: attention and the fused kernels 300 vs 326 ms of CPU over 20 lists; throughput
# interleaved with SDPA in two one-off A/Bs of 5 rounds each, 800 seed pairs: +1.6% on the mean
# both times, 461.5 vs 454.3 and 463.7 vs 456.3 pairs/s; 20 candidates p50 45.3 vs 45.2 ms).
_ATTENTION = "eager"
# what an export is of: a sentence-transformers bi-encoder, or a *ForSequenceClassification model
EMBEDDING = "embedding"
CROSS_ENCODER = "cross-encoder"
Kind = Literal["embedding", "cross-encoder"]


class Int8CacheError(UserFacingError, RuntimeError):
    """A cached int8 export is damaged; the message names the file and the fix."""


class Int8ExportError(ModelLoadError):
    """A model cannot be exported to int8 ONNX (unsupported layout, or the export is wrong)."""


@dataclass(frozen=True)
class Int8Settings:
    """How a model is exported and quantized; part of the cache digest (a change re-exports)."""

    runtime: Runtime = field(default=ONNXRUNTIME, metadata={"help": "onnxruntime: an ONNX export quantized with quantize_dynamic (weights int8, activations quantized per batch at run time). inductor: torch.export + torchao's PT2E X86InductorQuantizer (static: activation scales calibrated once on CALIBRATION_FILE), compiled by torch.compile's inductor on first use in a process (~10-15 s; needs a C++ compiler). per_channel, reduce_range, matmul_const_b_only, op_types and opset are onnxruntime's; keep_fp32 is both runtimes'."})
    per_channel: bool = field(default=True, metadata={"help": "One int8 scale per output channel of each weight matrix (cos(fp32, int8) 0.994 on MiniLM vs 0.960 with one scale per matrix)."})
    reduce_range: bool = field(default=False, metadata={"help": "7-bit weights, for CPUs without VNNI whose u8s8 products can saturate; on VNNI it only loses precision (cos 0.865)."})
    matmul_const_b_only: bool = field(default=True, metadata={"help": "Quantize only MatMuls whose second input is a weight (onnxruntime's MatMulConstBOnly); the attention score MatMuls stay fp32."})
    op_types: tuple[str, ...] = field(default=("MatMul",), metadata={"help": "Operators quantized; adding 'Gather' also stores the embedding table in int8 (59 -> 23 MB, cos 0.9934 vs 0.9939)."})
    keep_fp32: tuple[str, ...] = field(default=(), metadata={"help": "Regular expressions of what stays fp32: onnxruntime node names, e.g. r'layer\\.\\d+/output/dense' (the FFN output: cos 0.997, ~30% slower); inductor Linear module names, e.g. r'output\\.dense' (seed val reranking MRR@10 minus fp32 -0.0042 with it against -0.0036 without: not worth it)."})
    opset: int = field(default=17, metadata={"help": "ONNX opset of the export."})

    def __post_init__(self) -> None:
        # tuples, also when built from YAML/JSON lists: the settings are hashed and compared
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        if not self.op_types:
            raise ValueError("Int8Settings.op_types is empty; quantize at least ('MatMul',)")
        for pattern in self.keep_fp32:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"Int8Settings.keep_fp32: {pattern!r} is not a regular expression ({exc}); escape dots as \\.") from None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

