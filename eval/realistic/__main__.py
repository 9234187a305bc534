"""Render a realistic-benchmark run's README from its JSON.

    python -m eval.realistic results/realistic/retrieval-val.json --out results/realistic/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from eval.realistic.benchmark import readme
from pipeline.data import DataError
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.realistic", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="The JSON that `python -m eval.retrieval --queries realistic --out FILE` wrote.")
    parser.add_argument("--out", metavar="FILE", help="Write the README here (default: print it).")
    args = parser.parse_args(argv)

    def body() -> None:
        path = Path(args.run)
        if not path.is_file():
            raise DataError(f"{path}: missing; write it first: python -m eval.retrieval --queries realistic --split val --out {path}")
        text = readme(json.loads(path.read_text(encoding="utf-8")))
        if args.out:
            atomic_write_text(args.out, text)
        else:
            sys.stdout.write(text)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
