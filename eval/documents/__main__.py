"""`python -m eval.documents`: the document benchmark (see eval/documents/benchmark.py)."""

from __future__ import annotations

import argparse
import time
from typing import Sequence

from eval.documents.benchmark import SPLITS, evaluate_documents, to_markdown
from pipeline.cli import add_io_arguments, config_for_data, finish_run
from pipeline.config import ConfigError, add_config_arguments
from pipeline.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    from eval.documents import benchmark

    doc = benchmark.__doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m eval.documents", description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder whose QA pairs sit beside the documents in the benchmark's indexes (and whose artifacts the systems use). Default: data.dir of the profile.",
        split="dev (choose settings on it) or test (run once). Default: dev.",
        split_choices=SPLITS,
        split_default="dev",
        formats="md (a table) or json.",
        out="Write the result as JSON here (and the per-question results beside it).",
    )
    parser.add_argument("--systems", default="full,rag_vanilla", metavar="LIST", help="Systems whose retrieval (and answers, with --answers) are measured. Default: full,rag_vanilla.")
    parser.add_argument("--answers", action="store_true", help="Also answer every question and score the answers (ROUGE-L, BERTScore against the evidence) and their support.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.systems import SYSTEM_NAMES

        config = config_for_data(args)
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in systems if s not in SYSTEM_NAMES]
        if unknown or not systems:
            raise ConfigError(f"--systems {args.systems!r}: unknown {unknown}; choose among {', '.join(SYSTEM_NAMES)}")
        result, rows = evaluate_documents(config, args.split, systems, answers=args.answers, show_progress=not args.no_progress)
        finish_run(args, "eval.documents", argv, started, result, to_markdown, rows=rows)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
