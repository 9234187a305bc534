"""Fine-tune the generator's base LM with LoRA as a query-likelihood reranker (rerank/query_likelihood.py).

    python -m finetune.ql_reranker --config smollm2
    python -m rerank.evaluate --split val --first-stage ft-dense --reranker ql=runs/smollm2/adapters/ql-reranker
    python -m eval.retrieval --protocol open-book --split val --retrievers full   # with rerank.kind: query-likelihood

Training rows: each train question, written from its own answer (the prompt holds the answer, the
completion is the question: doc2query's direction, Nogueira et al. 2019). No negatives are mined:
the model learns P(question | passage), and reranking compares that probability across the
candidates. Val rows (the loss per epoch): the first `finetune.ql_reranker.eval_limit` val pairs.
The training loop is the one of every adapter (finetune/common.py: TRL SFTTrainer,
completion-only loss, resumable, atomic save).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from finetune.common import train_lora_adapter
from pipeline.cli import add_io_arguments
from pipeline.config import Config, add_config_arguments, config_from_args
from pipeline.data import load_split
from pipeline.errors import run_cli
from rerank.query_likelihood import QL_ADAPTER_KIND, ql_example


def ql_rows(records: Sequence[dict[str, str]], tokenizer: Any = None) -> list[dict[str, str]]:
    """One prompt/completion row per (question, answer) record: the answer -> the question.
    Records without a question or an answer are skipped (they teach nothing)."""
    return [ql_example(r["question"], r["answer"], tokenizer) for r in records if r.get("question", "").strip() and r.get("answer", "").strip()]


def train_ql_reranker(config: Config, *, output: str | None = None, resume: bool = True, log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Train the query-likelihood adapter on the train split; returns the train report."""
    settings = config.finetune.ql_reranker

    def build_rows(tokenizer: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        train = load_split(config.data.dir, "train")[: settings.limit]
        val = load_split(config.data.dir, "val")[: settings.eval_limit]
        return ql_rows(train, tokenizer), ql_rows(val, tokenizer)

    return train_lora_adapter(
        config,
        settings,
        section="finetune.ql_reranker",
        kind=QL_ADAPTER_KIND,
        build_rows=build_rows,
        output=output or settings.output,
        resume=resume,
        log=log,
        show_progress=show_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """--out, --no-resume, --no-progress and the config flags; errors print as one line with exit status 2."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m finetune.ql_reranker", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_io_arguments(parser, out="Adapter folder. Default: finetune.ql_reranker.output.", out_metavar="DIR")
    parser.add_argument("--no-resume", action="store_true", help="Ignore checkpoints of an interrupted run with the same settings and start over.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars (logs stay).")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    overrides = [f"finetune.ql_reranker.output={json.dumps(args.out)}"] if args.out else []

    def body() -> None:
        train_ql_reranker(config_from_args(args, overrides), resume=not args.no_resume, show_progress=not args.no_progress)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
