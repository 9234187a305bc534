"""The runtimes of a cached int8 export: its tokenizer, and batches cut from inputs ordered by
token count (sentence-transformers orders by characters, which pads a quarter more on the seed
data: `longest_first`), run by onnxruntime (model.onnx) or by torch.compile's inductor
(model.pt2, compiled once per process at load, ~8-15 s; a C++ compiler is needed: freezing
prepacks the int8 weights for oneDNN and fuses the quantize steps into the matrix products). The
inductor runtime is faster on batches and slower on one query alone (each compiled kernel starts
its threads for two rows); `python -m eval.bench speed` measures both (docs/performance.md)."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from pipeline.int8.cache import _damaged
from pipeline.int8.settings import INDUCTOR, ONNX_NAME, PT2_NAME
from pipeline.int8.torch_export import _calibration_batches, _torchao

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# Inputs tokenized at once and ordered by token count before batches are cut from them: enough for
# the ordering to pad little (about 1.04x the real tokens on the seed data), bounded so that a
# call with a million texts does not hold a million encodings.
TOKENIZE_WINDOW = 4096


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

    def batch_count(self, inputs: int, batch_size: int) -> int:
        """How many batches `batches` cuts from `inputs` inputs (each window is cut separately)."""
        return sum(-(-min(TOKENIZE_WINDOW, inputs - offset) // batch_size) for offset in range(0, inputs, TOKENIZE_WINDOW))

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

