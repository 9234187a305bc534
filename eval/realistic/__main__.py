"""Render the realistic benchmark's README from its runs' JSON: retrieval runs, answers, latency.

    python -m eval.realistic results/realistic/retrieval-val.json results/realistic/retrieval-test.json \
        results/realistic/answers-test.json results/realistic/latency-test.json --out results/realistic/README.md \
        --readme-block README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from eval.realistic.benchmark import headline, kind_of, readme, run_lines
from pipeline.data import DataError
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.realistic", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="JSON files, in the order shown: what `python -m eval.retrieval --queries realistic --out FILE`, `python -m eval.realistic.answers --out FILE` or `python -m eval.bench condense --out FILE` wrote.")
    parser.add_argument("--out", metavar="FILE", help="Write the README here (default: print it).")
    parser.add_argument("--readme-block", metavar="FILE", help="Also fill the block <!-- results:realistic-headline:start/end --> of FILE (the front page) with the last retrieval run's headline table.")
    parser.add_argument("--rewriter", default="condense-trained", help="With --readme-block: the rewriter whose rows the headline shows. Default: condense-trained (full's).")
    args = parser.parse_args(argv)

    def body() -> None:
        from eval.bench_condense import to_markdown as latency_table
        from eval.realistic.answers import to_markdown as answers_table

        results = []
        for run in args.runs:
            path = Path(run)
            if not path.is_file():
                raise DataError(f"{path}: missing; write it first: python -m eval.retrieval --queries realistic --split val --out {path}")
            results.append(json.loads(path.read_text(encoding="utf-8")))
        sections = {
            "answers": lambda r: "\n".join([f"## Answers, split {r['split']}", "", *run_lines(r), "", answers_table(r).replace("### ", "#### ", 1)]),
            "latency": lambda r: "\n".join([f"## What the condense step costs, split {r['split']}", "", *run_lines(r), "", latency_table(r)]),
        }
        text = readme(results, sections=sections)
        if args.out:
            atomic_write_text(args.out, text)
        else:
            sys.stdout.write(text)
        if args.readme_block:
            from eval.publish import replace_block

            retrieval = [r for r in results if kind_of(r) == "retrieval"]
            if not retrieval:
                raise DataError("--readme-block: no retrieval run among the RUN files; give the JSON of python -m eval.retrieval --queries realistic")
            page = Path(args.readme_block)
            atomic_write_text(page, replace_block(page.read_text(encoding="utf-8"), "realistic-headline", headline(retrieval[-1], rewriter=args.rewriter)))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
