"""Speed of ragft's parts beside their baselines, and what int8 costs in quality, in one run.

    python -m eval.bench speed --quick                      # small samples: under 5 minutes on 2 cores
    python -m eval.bench speed --quick --format json --out results/bench/speed-quick.json --readme results/bench/README.md
    python -m eval.bench speed --from-json results/bench/speed-quick.json --readme results/bench/README.md  # render again
    python -m eval.bench speed                              # larger samples + eval.compare's stages on the demo data
    python -m eval.bench speed --from-json results/bench/speed.json --readme results/bench/README.md --readme-block README.md

Every figure below is measured in the same process, on the `--data` splits (default: the seed
splits in ../shared) with the profile's settings (`--config`, default smollm2; `--set` works):

- ingest: passages/s of the dense index's embedder with `index.backend=onnx-int8` (pipeline/int8.py),
  with `torch-int8` (pipeline/int8.py's inductor runtime), with `torch-bf16` (bfloat16 weights) and with torch fp32 (sentence-transformers, the `torch`
  backend), on the same "Question/Answer" texts of the first `--passages` train pairs at
  `index.embed_batch_size`; the headline `ingest_per_s` is the fastest of the int8 ones and bf16
  (`ingest_backend` names it; which one wins depends on the CPU: bf16 needs bf16 matrix units);
- rerank: (question, passage) pairs/s of the cross-encoder with `rerank.backend=onnx-int8`, `torch-int8`,
  `torch-bf16` and torch fp32 (headline: the fastest of int8 and bf16, `rerank_backend`), on the same pairs: full's retriever's (retrieve.mode) top-`rerank.candidates` for `--queries` val
  questions, `rerank.batch_size` per pass. Both timings are best of `--rounds` interleaved rounds
  (`timing.interleaved_rates`), so a neighbour's load hits both alike;
- retrieve + rerank: p50 latency of one val question through `pipeline.retrieve.build_retriever`
  (retrieve.mode, over an in-memory KnowledgeBase of the train pairs embedded with the same backend
  that embeds the question) plus `CrossEncoderReranker` on its top-`rerank.candidates` (logit cache
  off, so every query is scored), with the pair of backends quickest end to end (`measure_latency`:
  the two quickest embedders and cross-encoders on one query alone, `one_query` in the detail,
  tried in every pairing, the quickest pair timed again for the figure), since the fastest on
  batches is not always the fastest on one question;
- generate: tokens/s of `generator.model` through `LocalCausalLM.generate_batch` with the profile's
  settings (smollm2: bf16, batch 16, greedy, repetition penalty, longest prompts first) and through
  a plain `model.generate` in fp32 (prompts in the given order, same batch size, greedy, same
  repetition penalty and max_new_tokens), on `--prompts` rag_vanilla-style prompts (a val question
  with its dense top-`generator.context_top_k` passages); `generate_identical` is the share of
  greedy answers that are identical in both, and `generate_rougeL_delta` the paired difference of
  their mean ROUGE-L against the questions' val answers (95% interval in the detail), so the
  quality of the faster path is measured, not assumed;
- quality: open book (eval.retrieval's corpus: every answer of train + val + test; a val question's
  gold is its own answer), MRR@10 of retrieve.mode + rerank with both encoders int8 minus both fp32
  (`mrr10_delta`: onnx-int8's, or torch-int8's when its cross-encoder is the headline one, named by
  `mrr10_delta_backend`; bf16 minus fp32: `mrr10_delta_bf16`), on
  `--questions` val questions (a fixed sample, `eval.seed`), through rerank.evaluate and eval.metrics;
- compare (not with --quick, nor with --no-compare): `python -m eval.compare` with the profile on
  its bundled demo data in a fresh temporary run_dir: the seconds of each build step and each
  system, read from the metrics.json and predictions/*.done.json it writes;
- install (with --time-install, not with --quick): `make install` into a fresh temporary venv (the
  venv, torch, ragft and its packages from the registries, the byte-compile pass), the other half of
  a fresh clone's `make run`, so that the targets table can judge `make run` as a whole.

The embedder is the fine-tuned one eval.compare trained on `--data` ({run_dir}/data/<folder>-<hash>/
embedder) when the profile's `full` searches it (index.finetuned_embedder), else index.embed_model;
the cross-encoder is `--reranker`, else the one eval.compare trained on `--data`
({run_dir}/data/<folder>-<hash>/reranker), else `rerank.model`, else MiniLM with a random one-logit
head (same architecture, so the same cost; the report says which). It is copied into a temporary
folder first: its int8 export is written there, never into the model folder. The int8 export of
the bundled MiniLM is cached in {run_dir}/int8-cache, as `index.backend=onnx-int8` does; exports
and model loads happen before any clock starts. Progress goes to stderr, the result to stdout.

The package by role: `measure` (the inputs, each measured section and the run), `timing` (the
interleaved timing of the encoders), `render` (the Markdown, the READMEs and the targets table;
README blocks are filled through eval.publish.replace_block); this module is the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from eval.bench_speed.measure import (
    BACKENDS,
    FIGURES,
    FORMAT,
    SAMPLES,
    SEED_SPLITS,
    BenchError,
    Parts,
    backend_configs,
    build_kb,
    candidate_lists,
    compare_timings,
    copy_reranker,
    figures,
    first_token_latency,
    generation_rows,
    measure_ingest,
    measure_install,
    measure_latency,
    measure_one_query,
    measure_quality,
    measure_rerank,
    measure_retrieve_rerank,
    plain_generate,
    quickest,
    reranker_sources,
    run,
)
from eval.bench_speed.render import fill_block, read_result, readme_text, targets_table, to_markdown
from pipeline.cli import add_io_arguments
from pipeline.config import add_config_arguments, config_from_args
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text, write_json

__all__ = [
    "BACKENDS", "FIGURES", "FORMAT", "SAMPLES", "SEED_SPLITS", "BenchError", "Parts", "backend_configs", "build_kb",
    "build_parser", "candidate_lists", "compare_timings", "copy_reranker", "figures", "first_token_latency",
    "generation_rows", "main", "measure_ingest", "measure_install", "measure_latency", "measure_one_query",
    "measure_quality", "measure_rerank", "measure_retrieve_rerank", "plain_generate", "quickest", "readme_text",
    "reranker_sources", "run", "targets_table", "to_markdown",
]
# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench speed",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    q, f = SAMPLES["quick"], SAMPLES["full"]
    parser.add_argument("--quick", action="store_true", help="Small samples, no eval.compare: under 5 minutes on 2 cores.")
    add_io_arguments(
        parser,
        data="Prepared splits (train/val/test.jsonl) the figures are measured on. Default: the seed splits in ../shared.",
        data_default=str(SEED_SPLITS),
        formats="Print a Markdown table (md) or the JSON object (json) on stdout.",
        out="Also write the JSON result to FILE (atomically).",
    )
    parser.add_argument("--reranker", metavar="DIR", help="Cross-encoder folder. Default: the one eval.compare trained on --data, else rerank.model, else MiniLM with a random one-logit head.")
    for name, unit in (("passages", "Train passages embedded for the ingest figure"), ("queries", "Val questions of the rerank and retrieve+rerank figures"), ("prompts", "Prompts of the generate figure"), ("new_tokens", "max_new_tokens of the generate figure"), ("questions", "Val questions of the MRR@10 delta"), ("rounds", "Interleaved timing rounds of ingest and rerank (the best is kept)")):
        capped = " (at most the split's size)" if name in ("passages", "queries", "prompts", "questions") else ""
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, metavar="N", help=f"{unit}. Default: {q[name]} with --quick, else {f[name]}{capped}.")
    parser.add_argument("--no-compare", action="store_true", help="Without --quick: skip timing eval.compare on the demo data.")
    parser.add_argument("--time-install", action="store_true", help="Without --quick: also time `make install` into a fresh temporary venv (needs make and the package registries; ~2 minutes), so that the targets table judges a fresh clone's `make run` (install + eval.compare) against its 15 minutes.")
    parser.add_argument("--readme", metavar="FILE", help="Also write a README (command, git revision, wall time, figures) made from the result to FILE.")
    parser.add_argument("--readme-block", metavar="FILE", help="Also fill the block <!-- results:bench-speed:start --> ... <!-- results:bench-speed:end --> of FILE (the project README) with the result's tables, so no figure there is typed by hand.")
    parser.add_argument("--from-json", metavar="FILE", help="Measure nothing: render a result written earlier with --out (with --format, --readme).")
    parser.add_argument("--targets", action="append", default=[], metavar="LABEL=FILE", help="Measure nothing: a column (LABEL, e.g. the machine) of the targets table from a result written with --out; repeat for one column per result. Written with --targets-block.")
    parser.add_argument("--targets-block", metavar="FILE", help="With --targets: fill the block <!-- results:bench-targets:start --> ... <!-- results:bench-targets:end --> of FILE with the table of each target and each result's figure, met or not.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command = shlex.join(["python", "-m", "eval.bench", "speed", *argv])

    def body() -> None:
        if args.targets or args.targets_block:
            if not (args.targets and args.targets_block):
                raise BenchError("--targets and --targets-block go together. Fix: --targets 'AMD EPYC=results/bench/speed.json' --targets-block README.md")
            columns, files = [], []
            for item in args.targets:
                label, sep, file = item.partition("=")
                if not sep or not label.strip() or not file:
                    raise BenchError(f"--targets {item!r} is not LABEL=FILE. Fix: e.g. --targets 'AMD EPYC=results/bench/speed.json'")
                columns.append((label.strip(), read_result(Path(file), "--targets")))
                files.append(f"`{file}`")
            table = targets_table(columns)
            fill_block(args.targets_block, "--targets-block", "bench-targets", f"From {', '.join(files)}, generated by `--targets-block`:\n\n{table}")
            print(table)
            return
        if args.from_json:
            result = read_result(Path(args.from_json), "--from-json")
        else:
            config = config_from_args(args)
            with contextlib.redirect_stdout(sys.stderr):  # libraries' prints must not mix with the result
                result = run(args, config, log=lambda m: print(m, file=sys.stderr))
            if args.out:
                write_json(args.out, result)
        if args.readme:
            atomic_write_text(args.readme, readme_text(result, args.out or args.from_json))
        if args.readme_block:
            source = args.out or args.from_json
            header = (f"From `{source}`" if source else "From this run") + f" (command `{result['command']}`, revision `{result['git_revision']}`{' with uncommitted changes' if result.get('git_dirty') else ''}, finished {result['finished']}), generated by `--readme-block`:"
            fill_block(args.readme_block, "--readme-block", "bench-speed", "\n".join([header, "", to_markdown(result)]))
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))

    return run_cli(body)

