"""The machinery of a resumable training-data builder (finetune/judged_rewrites.py).

- `sample_texts(llm, conversations, n=..., ...)`: n sampled completions per conversation, through
  the LM's own batched `generate_batch` (one pass for all prompts; each repeat of a prompt is its
  own sample) or one chat call per sample for any other LlamaIndex LLM.
- `ChunkLog`: the append-only work file of a long build. A builder processes its units (passages,
  questions) in chunks and appends one line per finished unit; an interrupted run with the same
  settings skips what is in it. A line is complete only with its newline: a torn last line (a
  killed run) is cut off before the next append, as in eval.compare's generation cache.
- `builder_digest(...)`: the settings a builder's output depends on, hashed; the work file of other
  settings is removed rather than resumed.
- `finish(...)`: the output JSONL and its `.report.json` written atomically, the work file removed.

Sampling is seeded (`finetune.seed`) once per run: a resumed run draws other samples for the
units that were left, which is harmless (each unit is judged on its own samples).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from pipeline.config import add_config_arguments, config_from_args
from pipeline.errors import run_cli
from pipeline.fileio import append_lines, read_complete_lines, write_json, write_jsonl

if TYPE_CHECKING:
    import argparse

    from llama_index.core.base.llms.types import ChatMessage

    from pipeline.config import Config


def sample_texts(
    llm: Any,
    conversations: Sequence[Sequence["ChatMessage"]],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    show_progress: bool = False,
) -> list[list[str]]:
    """`n` completions of each conversation (raw text, in sample order), `len(conversations)` lists."""
    if n < 1:
        raise ValueError(f"sample_texts: n must be >= 1; got {n}")
    if hasattr(llm, "generate_batch") and hasattr(llm, "render"):
        prompts = [llm.render(list(messages)) for messages in conversations]
        flat = llm.generate_batch([p for p in prompts for _ in range(n)], max_new_tokens=max_new_tokens, temperature=temperature, show_progress=show_progress)
    else:  # any other LlamaIndex LLM (backend=openai): one call per sample
        flat = [llm.chat(list(messages), max_new_tokens=max_new_tokens, temperature=temperature).message.content or "" for messages in conversations for _ in range(n)]
    return [list(flat[i * n : (i + 1) * n]) for i in range(len(conversations))]


def builder_digest(config: "Config", kind: str, settings: Any, sections: Sequence[str] = ("data", "generator", "index", "retrieve")) -> str:
    """A short hash of what a builder's output depends on: the config `sections`, its own
    `settings` (a dataclass or mapping; keys that only size the work, limit, chunk_size, output,
    are left out so a quick run's work is reused by the full one) and `finetune.seed`. data.input
    is left out too: the splits in data.dir are what is read (eval.compare --data blanks it)."""
    data = config.to_dict()
    data["data"] = {k: v for k, v in data["data"].items() if k != "input"}
    own = settings if isinstance(settings, Mapping) else {k: v for k, v in vars(settings).items()}
    own = {k: v for k, v in own.items() if k not in ("limit", "chunk_size", "output")}
    payload = {"kind": kind, "sections": {name: data[name] for name in sections}, "settings": own, "seed": config.finetune.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


class ChunkLog:
    """Finished units of one build, one JSON line each: `{"key": ..., **entry}` (see the module doc).

    The file is hidden beside the output and named after the digest: `.<output name>.<digest>.partial`.
    Opening it removes the work files of other digests (one writer per output is assumed)."""

    def __init__(self, output: str | Path, digest: str, *, resume: bool = True) -> None:
        output = Path(output)
        self.path = output.parent / f".{output.name}.{digest}.partial"
        for stale in output.parent.glob(f".{output.name}.*.partial"):
            if stale != self.path or not resume:
                stale.unlink(missing_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        """Entries by key, in the order they were written (a torn last line is ignored)."""
        return {entry["key"]: entry for entry in read_complete_lines(self.path) if isinstance(entry, dict) and isinstance(entry.get("key"), str)}

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        append_lines(self.path, (dict(entry) for entry in entries))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def report_path(output: str | Path) -> Path:
    """`<stem>.report.json` beside a builder's output JSONL."""
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json")


def finish(output: str | Path, rows: Sequence[Mapping[str, Any]], report: Mapping[str, Any], log: Optional[ChunkLog] = None) -> Path:
    """Write the output rows and the report (each atomically), then drop the work file."""
    output = Path(output)
    write_jsonl(output, [dict(r) for r in rows])
    write_json(report_path(output), dict(report))
    if log is not None:
        log.discard()
    return output


def chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def builder_parser(prog: str, doc: str, *, output_help: str, limit_help: str) -> "argparse.ArgumentParser":
    """A builder's command line: --config/--set, --output, --limit, --no-resume,
    --no-progress; the description is the module doc's first paragraph, the rest its epilog."""
    import argparse


    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="FILE", help=output_help)
    parser.add_argument("--limit", type=int, metavar="N", help=limit_help)
    parser.add_argument("--no-resume", action="store_true", help="Start over: drop the work file of an interrupted run with the same settings.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars (the summary lines stay).")
    return parser


def run_builder(args: "argparse.Namespace", section: str, build: Callable[..., Any]) -> int:
    """Run `build(config, resume=, show_progress=, log=)` under the CLI's config, --limit and
    --output being shortcuts for finetune.<section>.limit / .output; the exit code of run_cli."""
    extra = [f"finetune.{section}.limit={args.limit}"] if args.limit is not None else []
    if args.output:
        extra.append(f"finetune.{section}.output={json.dumps(args.output)}")

    def body() -> None:
        build(config_from_args(args, extra), resume=not args.no_resume, show_progress=not args.no_progress, log=lambda m: print(m, flush=True))

    return run_cli(body)

