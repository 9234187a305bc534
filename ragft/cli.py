"""The `ragft` command: one entry point whose subcommands run the project's modules.

    ragft compare                        # every system on the default profile, one table (python -m eval.compare)
    ragft index --source notes.md        # add documents to the knowledge base (python -m pipeline.index)
    ragft train generator --mode raft    # fine-tune one part (python -m finetune.generator)
    ragft ui                             # the Streamlit chat (streamlit run ui/app.py)
    ragft <subcommand> --help            # the subcommand's own flags

Each subcommand hands its arguments unchanged to the module's `main`, so `ragft compare --limit 5`
and `python -m eval.compare --limit 5` are the same run. Modules are imported only when their
subcommand runs, so `ragft --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


@dataclass(frozen=True)
class Command:
    module: str  # the module whose main(argv) runs, also `python -m <module>`
    summary: str


COMMANDS: dict[str, Command] = {
    "compare": Command("eval.compare", "build what is missing, run every system, print one table with intervals"),
    "prepare": Command("pipeline.prepare", "validate, de-duplicate and split a raw question/answer file"),
    "index": Command("pipeline.index", "ingest the knowledge base and documents into the indexes"),
    "retrieval": Command("eval.retrieval", "retrieval metrics (MRR@10, recall@k) of each system's retriever"),
    "rerankers": Command("rerank.evaluate", "compare rerankers over one first stage"),
    "score": Command("eval.score", "score prediction files (BLEU-4, ROUGE-L, BERTScore, ...)"),
    "publish": Command("eval.publish", "publish a compare run under results/ and regenerate the README tables"),
    "bench": Command("eval.bench", "speed and scale benchmarks (bench speed | scale | retrieval)"),
    "documents": Command("eval.documents", "the document benchmark: Python's reference beside the knowledge base, hand-written questions"),
    "answerability": Command("eval.answerability", "in-KB against out-of-KB questions: fit the agent's calibrated grade, refusal rates"),
    "grounding": Command("eval.grounding", "how much of full's answers their passages hold, per generator.copy_bias"),
}

# ragft train <part>: one fine-tuning module per trainable part
TRAIN_PARTS: dict[str, Command] = {
    "generator": Command("finetune.generator", "LoRA generator, plain (question -> answer) or RAFT (with retrieved passages)"),
    "embedder": Command("finetune.embedder", "fine-tune the retrieval embedder on the train split"),
    "ql-reranker": Command("finetune.ql_reranker", "the query-likelihood reranker (SmolLM2 + LoRA; shipped)"),
    "reranker": Command("finetune.reranker", "the cross-encoder reranker (rerank.kind: cross-encoder)"),
    "rewriter": Command("finetune.rewriter", "the LoRA HyDE query rewriter"),
    "condenser": Command("finetune.condenser", "the LoRA condenser: conversation + message -> standalone search question(s)"),
    "tiny": Command("finetune.tiny", "the tiny scratch LM the test suite uses"),
}

UI_APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"


def _run_module(module: str, argv: Sequence[str]) -> int:
    entry = importlib.import_module(module)
    return int(entry.main(list(argv)) or 0)


def _run_ui(argv: Sequence[str]) -> int:
    """streamlit runs the app in its own process; arguments after `--` reach the app (profile, overrides)."""
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: ragft ui [STREAMLIT OPTIONS] [-- APP ARGUMENTS]\n\n"
            "Starts the chat UI: streamlit run ui/app.py. Streamlit's own options come first\n"
            "(for instance --server.port 8502); the app's come after `--` (ragft ui -- --help lists them:\n"
            "the profile and config overrides)."
        )
        return 0
    command = [sys.executable, "-m", "streamlit", "run", str(UI_APP), *argv]
    return subprocess.call(command, env=os.environ.copy())


def _table(rows: dict[str, tuple[str, str]]) -> str:
    width = max(map(len, rows))
    return "\n".join(f"  {name:<{width}}  {summary} ({runs})" for name, (summary, runs) in rows.items())


def _module_rows(commands: dict[str, Command]) -> dict[str, tuple[str, str]]:
    return {name: (command.summary, f"python -m {command.module}") for name, command in commands.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragft",
        description="ragft: retrieval-augmented generation with parts fine-tuned for and on retrieval.",
        epilog="subcommands:\n"
        + _table(
            {
                **_module_rows(COMMANDS),
                "train": ("fine-tune one part; `ragft train --help` lists the parts", "python -m finetune.<part>"),
                "ui": ("the Streamlit chat", "streamlit run ui/app.py"),
            }
        )
        + "\n\n`ragft <subcommand> --help` shows each one's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subcommand", choices=[*COMMANDS, "train", "ui"], metavar="subcommand", help="what to run (listed below)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the subcommand's own arguments")
    return parser


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragft train",
        description="Fine-tune one part of ragft. Artifacts go under the profile's run_dir.",
        epilog="parts:\n" + _table(_module_rows(TRAIN_PARTS)) + "\n\n`ragft train <part> --help` shows each part's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("part", choices=list(TRAIN_PARTS), metavar="part", help="the part to fine-tune (listed below)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the part's own arguments")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.subcommand == "ui":
        return _run_ui(args.args)
    if args.subcommand == "train":
        train = build_train_parser().parse_args(args.args)
        return _run_module(TRAIN_PARTS[train.part].module, train.args)
    return _run_module(COMMANDS[args.subcommand].module, args.args)
