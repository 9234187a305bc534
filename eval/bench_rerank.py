"""Reranking benchmark: cross-encoder throughput and latency on this machine.

    python -m eval.bench rerank
    python -m eval.bench rerank --config tiny --set rerank.model=runs/seed/reranker --queries 30
    python -m eval.bench_rerank --sizes 20,50,100 --format json --out runs/bench/rerank.json

For each candidate-list size (default top-20 and top-50) it reranks `--queries` real questions,
each with a list of real answer passages from the data (`data.dir`: val questions, passages drawn
from every split's answers; the cost depends on the text lengths, not on which passages they are),
through `CrossEncoderReranker.postprocess_nodes`, the code path the query engine uses, and reports
pairs/s and per-query latency p50/p95 (after one warm-up call). The model is `rerank.model` when
that folder exists, else the base encoder with a fresh one-logit head (same architecture, so the
same cost), and the report says which.

ONNX: sentence-transformers' ONNX backend needs `optimum-onnx[onnxruntime]`. When it imports, the
same lists are run with backend="onnx" (exported from a temporary copy of the model, so nothing is
written into the model folder) and the speed-up and the largest score difference are reported;
when it does not, the report says so and why (`onnx_backend.available: false`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from pipeline.config import Config, add_config_arguments, config_from_args
from pipeline.data import DataError, load_split
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text

DEFAULT_SIZES = (20, 50)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def candidate_lists(config: Config, sizes: Sequence[int], queries: int, seed: int) -> dict[int, list[tuple[str, list[str]]]]:
    """Per size: `queries` (question, passages) lists made of the data's own questions and answers."""
    records = {name: load_split(config.data.dir, name) for name in ("train", "val", "test")}
    questions = [r["question"] for r in records["val"] or records["train"]]
    passages = [r["answer"] for rows in records.values() for r in rows]
    if not questions or len(passages) < max(sizes):
        raise DataError(f"{config.data.dir}: needs questions and at least {max(sizes)} answers for top-{max(sizes)} lists; got {len(questions)} and {len(passages)}")
    rng = random.Random(seed)
    return {size: [(questions[i % len(questions)], rng.sample(passages, size)) for i in range(queries)] for size in sizes}


def _nodes(passages: Sequence[str]):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(id_=f"p{i}", text=p), score=1.0 / (i + 1)) for i, p in enumerate(passages)]


def time_reranker(reranker: Any, lists: Sequence[tuple[str, list[str]]], *, show_progress: bool = True, desc: str = "") -> dict[str, float]:
    """Latency p50/p95 (ms per query) and pairs/s of `reranker` over `lists` (one warm-up first)."""
    from tqdm.auto import tqdm

    question, passages = lists[0]
    reranker.postprocess_nodes(_nodes(passages), query_str=question)  # warm-up: lazy load, first-call allocations
    seconds = []
    for question, passages in tqdm(lists, desc=desc, unit="q", disable=not show_progress, leave=False):
        nodes = _nodes(passages)
        started = time.perf_counter()
        reranker.postprocess_nodes(nodes, query_str=question)
        seconds.append(time.perf_counter() - started)
    pairs = sum(len(p) for _, p in lists)
    return {
        "queries": len(lists),
        "pairs": pairs,
        "pairs_per_s": pairs / sum(seconds),
        "latency_ms_p50": 1000 * percentile(seconds, 50),
        "latency_ms_p95": 1000 * percentile(seconds, 95),
    }


def onnx_available() -> tuple[bool, str]:
    """Whether sentence-transformers' ONNX backend can run here, and why not when it cannot."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, "onnxruntime is not installed"
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        return False, (
            "optimum-onnx is not installed: `pip install optimum-onnx[onnxruntime]` (sentence-transformers[onnx]) resolves "
            "only to optimum-onnx 0.1.0, which requires transformers<4.58 and would downgrade this project's transformers 5.x, "
            "so it is not installed"
        )
    except Exception as exc:  # installed but broken against this transformers version
        return False, f"optimum.onnxruntime fails to import ({exc.__class__.__name__}: {exc})"
    return True, ""


def resolve_bench_model(config: Config) -> tuple[str, str]:
    """(reference, description): the configured cross-encoder if it exists, else the base encoder.
    These benchmarks time a cross-encoder: with rerank.kind=query-likelihood, rerank.model is an LM
    adapter, so the cross-encoder is finetune.reranker's output."""
    from pipeline.models import ModelNotFoundError, resolve_model

    key, reference = ("rerank.model", config.rerank.model) if config.rerank.kind == "cross-encoder" else ("finetune.reranker.output", config.finetune.reranker.output)
    try:
        return resolve_model(reference, allow_download=False), f"{key} ({reference})"
    except ModelNotFoundError:
        base = config.finetune.reranker.base_model
        return base, f"{base} with a fresh one-logit head ({key} {reference} not found; same architecture, same cost)"


def run_benchmark(config: Config, *, sizes: Sequence[int] = DEFAULT_SIZES, queries: int = 20, onnx: bool = True, show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from pipeline.models import check_model_source, load_cross_encoder
    from rerank.cross_encoder import CrossEncoderReranker

    reference, described = resolve_bench_model(config)
    check_model_source(config, reference, "rerank.model")
    lists = candidate_lists(config, sizes, queries, config.eval.seed)
    device = "cpu" if config.generator.device == "cpu" else "auto"
    model = load_cross_encoder(reference, device=device, max_length=config.rerank.max_length, num_labels=1, allow_pickle=config.security.allow_pickle_weights)
    settings = {"top_n": config.rerank.top_n, "batch_size": config.rerank.batch_size, "max_length": config.rerank.max_length}
    torch_reranker = CrossEncoderReranker.from_model(model, name=reference, **settings)
    result: dict[str, Any] = {
        "model": described,
        "device": str(model.device),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {**settings, "queries": queries},
        "torch": {},
    }
    log(f"model: {described}; device {model.device}; {torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.1f}")
    for size in sizes:
        result["torch"][f"top{size}"] = time_reranker(torch_reranker, lists[size], show_progress=show_progress, desc=f"torch top-{size}")
    available, why = onnx_available() if onnx else (False, "skipped (--no-onnx)")
    result["onnx_backend"] = {"available": available, "reason": why}
    if available:
        with tempfile.TemporaryDirectory(prefix="ragft-onnx-") as tmp:
            copy = Path(tmp) / "model"
            model.save_pretrained(str(copy))  # export beside a copy: the user's folder stays untouched
            onnx_model = load_cross_encoder(str(copy), device=device, max_length=config.rerank.max_length, backend="onnx")
            onnx_reranker = CrossEncoderReranker.from_model(onnx_model, name=f"{reference} (onnx)", **settings)
            question, passages = lists[sizes[0]][0]
            diff = float(abs(torch_reranker.score_pairs(question, passages) - onnx_reranker.score_pairs(question, passages)).max())
            result["onnx_backend"]["max_abs_logit_diff"] = diff
            for size in sizes:
                timing = time_reranker(onnx_reranker, lists[size], show_progress=show_progress, desc=f"onnx top-{size}")
                timing["speedup_vs_torch"] = timing["pairs_per_s"] / result["torch"][f"top{size}"]["pairs_per_s"]
                result["onnx_backend"][f"top{size}"] = timing
    return result


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Reranking benchmark: {result['model']}",
        f"device {result['device']}, {result['machine']['cpus']} CPUs, {result['machine']['torch_threads']} torch threads, load average {result['machine']['load_avg_1m']:.1f} at start; batch {result['settings']['batch_size']}, max_length {result['settings']['max_length']}, {result['settings']['queries']} queries per size",
        "",
        "| backend | candidates | pairs/s | latency p50 (ms) | latency p95 (ms) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, row in result["torch"].items():
        lines.append(f"| torch | {key[3:]} | {row['pairs_per_s']:.1f} | {row['latency_ms_p50']:.0f} | {row['latency_ms_p95']:.0f} | 1.00 |")
    onnx = result["onnx_backend"]
    if onnx["available"]:
        for key, row in onnx.items():
            if key.startswith("top"):
                lines.append(f"| onnx | {key[3:]} | {row['pairs_per_s']:.1f} | {row['latency_ms_p50']:.0f} | {row['latency_ms_p95']:.0f} | {row['speedup_vs_torch']:.2f} |")
        lines.append("")
        lines.append(f"ONNX vs torch: largest logit difference {onnx['max_abs_logit_diff']:.2e}")
    else:
        lines.append("")
        lines.append(f"ONNX backend: not measured: {onnx['reason']}.")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m eval.bench rerank")
    parser.description = (
        "Cross-encoder reranking throughput (pairs/s) and per-query latency p50/p95 for top-20 and top-50 candidate "
        "lists on this machine, through CrossEncoderReranker; plus the speed-up of sentence-transformers' ONNX backend "
        "when it is installed (else the reason it is not)."
    )
    add_config_arguments(parser)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="Candidate-list sizes, comma-separated.")
    parser.add_argument("--queries", type=int, default=20, help="Timed queries per list size (after one warm-up).")
    parser.add_argument("--no-onnx", action="store_true", help="Skip the ONNX backend even when it is installed.")
    parser.add_argument("--format", choices=("md", "json"), default="md", help="Print a Markdown table or JSON.")
    parser.add_argument("--out", default=None, help="Also write the JSON result to this file (atomically).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        print(f"error: --sizes must be positive integers separated by commas, e.g. 20,50; got {args.sizes!r}", file=sys.stderr)
        return 2
    if args.queries <= 0:
        print(f"error: --queries must be > 0; got {args.queries}", file=sys.stderr)
        return 2

    def body() -> None:
        config = config_from_args(args)
        result = run_benchmark(config, sizes=sizes, queries=args.queries, onnx=not args.no_onnx, show_progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(args.out), json.dumps(result, indent=2))

    return run_cli(body)

if __name__ == "__main__":
    sys.exit(main())
