"""int8 inference for ragft's two BERT encoders on the CPU: the bi-encoder of the dense index
(all-MiniLM-L6-v2 or a fine-tuned copy) and the cross-encoder reranker, on two runtimes:
onnxruntime (`index.backend` / `rerank.backend` = onnx-int8: dynamic activation scales) and torch
inductor (torch-int8: static scales calibrated once, compiled in each process).

    python -m pipeline.index --config tiny --set index.backend=onnx-int8 --rebuild   # int8 index
    python -m eval.compare --config tiny --set rerank.backend=onnx-int8              # int8 reranker

    from pipeline.int8 import Int8CrossEncoder, Int8Embedding
    embed = Int8Embedding(model_path="runs/tiny/embedder", cache_dir="runs/tiny/int8-cache")  # cheap
    embed.get_text_embedding_batch(texts)      # exports + quantizes once (~5 s for MiniLM), then reuses
    scorer = Int8CrossEncoder("runs/tiny/reranker", max_length=256)
    scorer.predict([(question, passage), ...], batch_size=32, activation_fn=torch.nn.Identity())

One module per role; each imports only those above it (and pipeline.models' errors and safety
checks, the pipeline core):

    settings.py      kinds, runtimes, cache file names, Int8Settings, the errors
    source.py        what the export reads from a model folder: files, pooling, lengths, sample batches
    onnx_export.py   torch.onnx.export, checked, then onnxruntime's quantize_dynamic (model.onnx)
    torch_export.py  torch.export + torchao's PT2E x86 quantizer, calibrated on calibration.jsonl (model.pt2)
    export.py        one export whichever the runtime: load, wrap, quantize, save the tokenizer
    cache.py         where an export is cached, its digests, ensure_int8 (reuse, rebuild or refuse)
    runtime.py       tokenize, order by tokens, batch, run (onnxruntime session or compiled program)
    encoders.py      Int8Embedding (a LlamaIndex embedding) and Int8CrossEncoder (CrossEncoder.predict)

Importing it loads llama_index.core (Int8Embedding is a LlamaIndex class) but neither torch nor
onnxruntime: those load with the first export or runtime.
"""

from __future__ import annotations

from pipeline.int8.cache import CACHE_ENV, cache_folder, default_int8_cache_dir, ensure_int8, settings_digest, source_digest
from pipeline.int8.encoders import Int8CrossEncoder, Int8Embedding
from pipeline.int8.runtime import TOKENIZE_WINDOW, default_threads, in_given_order, longest_first
from pipeline.int8.settings import (
    CACHE_DIRNAME,
    CROSS_ENCODER,
    EMBEDDING,
    FORMAT,
    INDUCTOR,
    META_NAME,
    ONNX_NAME,
    ONNXRUNTIME,
    PT2_NAME,
    Int8CacheError,
    Int8ExportError,
    Int8Settings,
    Kind,
    Runtime,
)
from pipeline.int8.source import source_files
from pipeline.int8.torch_export import CALIBRATION_FILE

__all__ = [
    "CACHE_DIRNAME",
    "CACHE_ENV",
    "CALIBRATION_FILE",
    "CROSS_ENCODER",
    "EMBEDDING",
    "FORMAT",
    "INDUCTOR",
    "Int8CacheError",
    "Int8CrossEncoder",
    "Int8Embedding",
    "Int8ExportError",
    "Int8Settings",
    "Kind",
    "META_NAME",
    "ONNXRUNTIME",
    "ONNX_NAME",
    "PT2_NAME",
    "Runtime",
    "TOKENIZE_WINDOW",
    "cache_folder",
    "default_int8_cache_dir",
    "default_threads",
    "ensure_int8",
    "in_given_order",
    "longest_first",
    "settings_digest",
    "source_digest",
    "source_files",
]
