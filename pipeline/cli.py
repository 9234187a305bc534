"""What every command line shares: the --data/--split/--format/--out arguments, the config
they resolve to, and the record a committed run keeps of how it was made."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.config import Config, config_from_args, load_config
from pipeline.data import SPLITS

FORMATS = ("md", "json")


def add_io_arguments(
    parser: argparse.ArgumentParser,
    *,
    data: Optional[str] = None,
    data_default: Optional[str] = None,
    split: Optional[str] = None,
    split_default: Optional[str] = None,
    split_choices: Sequence[str] = SPLITS,
    formats: Optional[str] = None,
    out: Optional[str] = None,
    out_metavar: str = "FILE",
    out_required: bool = False,
) -> None:
    """Add the arguments a command reads its data from and writes its result to, in this order;
    each is added when its help text is given: --data DIR, --split (one of split_choices),
    --format md|json (default md), --out FILE (or out_metavar; out_required for a command that
    has no default place to write)."""
    if data is not None:
        parser.add_argument("--data", metavar="DIR", default=data_default, help=data)
    if split is not None:
        parser.add_argument("--split", choices=list(split_choices), default=split_default, help=split)
    if formats is not None:
        parser.add_argument("--format", choices=FORMATS, default="md", help=formats)
    if out is not None:
        parser.add_argument("--out", metavar=out_metavar, required=out_required, help=out)


def same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def data_run_dir(run_dir: str, data_dir: str | Path) -> str:
    """Where the artifacts built from another data set live: one folder per data folder."""
    resolved = str(Path(data_dir).expanduser().resolve())
    return f"{run_dir}/data/{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def config_for_data(args: argparse.Namespace, flags: Sequence[str] = ()) -> Config:
    """The config of a command with --config/--set and --data (eval.compare, eval.retrieval): with
    --data DIR other than the profile's, every data-dependent artifact (index, reranker, embedder,
    adapters) lives in data_run_dir, the folder eval.compare builds them in for DIR."""
    config = config_from_args(args, list(flags))
    if args.data is None or same_path(args.data, config.data.dir):
        return config
    extra = [f"data.dir={json.dumps(args.data)}"]
    if not any(o.strip().startswith("data.input=") for o in args.overrides):
        # the profile's raw file belongs to the profile's data folder: never prepare it into DIR
        # (missing splits in DIR are then an error naming them, not the demo data in disguise)
        extra.append('data.input=""')
    if not any(o.strip().startswith("run_dir=") for o in args.overrides):
        extra += [
            f"run_dir={json.dumps(data_run_dir(config.run_dir, args.data))}",
            # the base LM never sees the data ("vanilla" stays vanilla): keep sharing it
            f"generator.model={json.dumps(config.generator.model)}",
            f"generator.convert_dir={json.dumps(config.generator.convert_dir)}",
            f"finetune.tiny.output={json.dumps(config.finetune.tiny.output)}",
            # ... so the profile's model folders stay trusted beside the new run folder
            f"security.model_dirs={json.dumps(['{run_dir}', *config.security.model_dirs])}",
        ]
    return load_config(args.config, [*args.overrides, *flags, *extra])


def git_revision(repo: Path) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def finish_run(args: argparse.Namespace, module: str, argv: Sequence[str] | None, started: float, result: dict[str, Any], to_markdown: Any, *, rows: Optional[Sequence[Any]] = None, rows_suffix: str = ".questions.jsonl") -> None:
    """The end of a benchmark command: its run record into `result`, the JSON at --out (and the
    per-question `rows` beside it, with `rows_suffix`), the result printed as --format asks."""
    from pipeline.fileio import write_json, write_jsonl

    result["run"] = run_record(module, argv, started)
    if args.out:
        write_json(args.out, result)
        if rows is not None:
            write_jsonl(Path(args.out).with_suffix(rows_suffix), rows)
    print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))


def run_record(module: str, argv: Sequence[str] | None, started: float) -> dict[str, Any]:
    """What publishing needs to document a committed run, recorded by the command itself: its exact
    command line (`python -m <module> ...`), the git revision and the wall time since `started`."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": f"python -m {module} " + shlex.join(args), "git_revision": git_revision(Path.cwd()), "seconds": round(time.perf_counter() - started, 1)}
