"""Benchmarks, one subcommand each: `python -m eval.bench <subcommand> [its options]`.

    python -m eval.bench --list                       # the subcommands and what they measure
    python -m eval.bench retrieval --sizes 2000,20000
    python -m eval.bench retrieval --help             # a subcommand's own options
    python -m eval.bench speed --quick

A subcommand is a module `eval/bench_<name>.py` or a package `eval/bench_<name>/` with a module
docstring (its first line is the summary shown by --list) and `main(argv: list[str] | None) -> int`,
which parses its own flags (use `prog="python -m eval.bench <name>"`). Those named that way are found
automatically; `SUBCOMMANDS` below only pins the order and lets a name point at another module.
Subcommands are imported only when run, so one with a missing optional dependency never breaks the
others.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Sequence

# name -> module. Add a line here only to rename or reorder; eval/bench_<name>.py is found anyway.
SUBCOMMANDS: dict[str, str] = {
    "retrieval": "eval.bench_retrieval",
    "scale": "eval.bench_scale",
    "speed": "eval.bench_speed",
}


def _source(module_name: str) -> Path:
    """The file that holds a subcommand's docstring: eval/bench_<name>.py, or its package's __init__.py."""
    path = Path(__file__).resolve().parent / module_name.rsplit(".", 1)[-1]
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def available() -> dict[str, str]:
    """Every subcommand: the registered ones, then any eval/bench_<name>.py module or package."""
    found = dict(SUBCOMMANDS)
    folder = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda i: i.name):
        if info.name.startswith("bench_"):
            found.setdefault(info.name[len("bench_") :], f"eval.{info.name}")
    return {name: module for name, module in found.items() if _source(module).is_file()}


def _summary(module_name: str) -> str:
    """First docstring line of a module, read from its source (no import: fast, never fails)."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(_source(module_name).read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return "(unreadable)"
    return doc.strip().split("\n", 1)[0]


def usage() -> str:
    commands = available()
    width = max((len(n) for n in commands), default=8)
    lines = [__doc__.strip().split("\n\n")[0], "", "usage: python -m eval.bench <subcommand> [options]   (python -m eval.bench <subcommand> --help)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {_summary(module)}" for name, module in commands.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    commands = available()
    if name not in commands:
        print(f"error: unknown benchmark {name!r}; choose one of: {', '.join(commands) or '(none installed)'}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
