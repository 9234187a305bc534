"""Fine-tune the MiniLM bi-encoder (the dense retriever's embedder) on the train split.

    python -m pipeline.index     --config tiny                        # the knowledge base: mining needs it
    python -m finetune.embedder  --config tiny
    python -m finetune.embedder  --config tiny --set data.dir=runs/seed/data --set run_dir=runs/seed
    # use it: the dense retriever reads index.embed_model; re-index explicitly with it
    python -m pipeline.index     --config tiny --set index.embed_model=runs/tiny/embedder --rebuild
    python -m eval.retrieval     --config tiny --set finetune.embedder.output=runs/tiny/embedder --retrievers dense,ft-dense

Training pairs are (train question, its own answer). The loss is sentence-transformers'
MultipleNegativesRankingLoss (InfoNCE): each question must pick its answer among every answer in
the batch (in-batch negatives, `batch_size - 1` of them for free) plus `hard_negatives` answers mined
with the project's hybrid retriever over the knowledge base (the question's own node and duplicate
answers excluded). The NO_DUPLICATES batch sampler keeps a passage from appearing twice in a batch,
where it would be a false negative. The val split is evaluated before and after with the open-book
protocol (dense retrieval over every answer of train+val+test): R@1, R@5, MRR@10, nDCG@10 with
95% intervals.

Output (`finetune.embedder.output`, written atomically): a sentence-transformers folder that
`index.embed_model` can point at, `ragft_config.yaml`, `train_log.json`, `eval_val.json`. An index
built with another embedder refuses to be queried with this one (and says to re-index with
--rebuild), because vectors of two models are not comparable.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from finetune.common import seed_everything
from finetune.reranker import (
    REPORT_METRICS,
    TrainingSetupError,
    format_comparison,
    mine_hard_negatives,
    open_knowledge_base,
    openbook_candidates,
    query_vectors,
    random_negatives,
    ranking_metrics,
)
from pipeline.config import Config, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import load_split
from pipeline.errors import run_cli
from pipeline.fileio import atomic_directory
from pipeline.models import check_model_source, resolve_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

TRAIN_LOG_NAME = "train_log.json"
EVAL_NAME = "eval_val.json"


def triplet_rows(records: Sequence[dict[str, str]], hard: Sequence[Sequence[str]], num_negatives: int, seed: int) -> dict[str, list[str]]:
    """Columns anchor, positive, negative_1..n; a question with fewer mined negatives than n gets
    random answers in the free slots (every row must have the same columns)."""
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(num_negatives)}}
    for i, (record, negatives) in enumerate(zip(records, hard)):
        negatives = list(negatives[:num_negatives])
        if len(negatives) < num_negatives:
            negatives += random_negatives(records, i, num_negatives - len(negatives), rng, exclude=negatives)
        if len(negatives) < num_negatives:
            continue
        columns["anchor"].append(record["question"])
        columns["positive"].append(record["answer"])
        for j, negative in enumerate(negatives):
            columns[f"negative_{j + 1}"].append(negative)
    return columns


def train_embedder(model: "SentenceTransformer", rows: dict[str, list[str]], config: Config, *, work_dir: str | Path, show_progress: bool = True) -> list[dict[str, Any]]:
    """Train `model` in place with MultipleNegativesRankingLoss; returns the log history."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    settings = config.finetune.embedder
    seed = config.finetune.seed
    dataset = Dataset.from_dict(rows)
    if len(dataset) == 0:
        raise TrainingSetupError("no training pairs: the train split is empty")
    model.max_seq_length = settings.max_seq_length
    total_steps = max(1, int(-(-len(dataset) // settings.batch_size) * settings.epochs))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=int(settings.warmup_ratio * total_steps),
        lr_scheduler_type="linear",
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated passage in a batch would be a false negative
        logging_strategy="steps",
        logging_steps=max(1, min(10, total_steps // 10)),
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        use_cpu=str(model.device) == "cpu",
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    model.eval()
    return list(trainer.state.log_history)


def dense_val_metrics(config: Config, reference: str, *, k: int = 20, show_progress: bool = True) -> dict[str, Any]:
    """Open-book val metrics of dense retrieval with the embedder at `reference`."""
    from pipeline.encoders import load_embedder

    embed = load_embedder(config, reference=reference)
    candidates = openbook_candidates(config, "val", k, limit=config.finetune.embedder.eval_limit, embed_model=embed, mode="dense", show_progress=show_progress)
    return ranking_metrics(candidates.ids, candidates.relevant, seed=config.eval.seed, samples=config.eval.bootstrap_samples)


@dataclass
class EmbedderRun:
    output: Path
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: dict[str, float]


def run(config: Config, *, show_progress: bool = True, log: Callable[[str], None] = print) -> EmbedderRun:
    from pipeline.encoders import load_sentence_transformer
    from pipeline.retrieve import build_retriever

    settings = config.finetune.embedder
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    seed_everything(config.finetune.seed)
    # a DataError already names the file, the row and the fix (python -m pipeline.prepare)
    train = load_split(config.data.dir, "train")
    load_split(config.data.dir, "val")  # fail before any work when val is missing
    if settings.limit is not None:
        train = train[: settings.limit]
    # the base model too: mining and the base evaluation take minutes on a real knowledge base
    resolve_model(check_model_source(config, settings.base_model, "finetune.embedder.base_model"))

    t = time.perf_counter()
    hard: list[list[str]] = [[] for _ in train]
    if settings.hard_negatives > 0:
        kb = open_knowledge_base(config)
        retriever = build_retriever(config, mode="hybrid", top_k=max(settings.mine_candidates, settings.hard_negatives + 2), kb=kb)
        hard = mine_hard_negatives(retriever, train, settings.hard_negatives, show_progress=show_progress, embeddings=query_vectors(kb, [r["question"] for r in train]))
    rows = triplet_rows(train, hard, settings.hard_negatives, config.finetune.seed)
    seconds["mining"] = time.perf_counter() - t
    log(f"examples: {len(rows['anchor'])} (question, answer) pairs with {settings.hard_negatives} mined hard negative(s) each + in-batch negatives (batch {settings.batch_size})")

    t = time.perf_counter()
    before = dense_val_metrics(config, settings.base_model, show_progress=show_progress)
    seconds["eval_base"] = time.perf_counter() - t

    t = time.perf_counter()
    device = "cpu" if config.generator.device == "cpu" else "auto"
    base = check_model_source(config, settings.base_model, "finetune.embedder.base_model")
    model = load_sentence_transformer(base, device=device, trust_remote_code=config.generator.trust_remote_code, allow_pickle=config.security.allow_pickle_weights)
    with tempfile.TemporaryDirectory(prefix="ragft-embedder-") as work:
        history = train_embedder(model, rows, config, work_dir=work, show_progress=show_progress)
    seconds["training"] = time.perf_counter() - t

    output = Path(settings.output)
    with atomic_directory(output) as tmp:
        model.save(str(tmp))
        t = time.perf_counter()
        after = dense_val_metrics(config, str(tmp), show_progress=show_progress)
        seconds["eval_finetuned"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - started
        evaluation = {"protocol": "open-book", "split": "val", "retriever": "dense", "base": before, "finetuned": after}
        (tmp / EVAL_NAME).write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
        (tmp / TRAIN_LOG_NAME).write_text(json.dumps({"pairs": len(rows["anchor"]), "seconds": seconds, "log_history": history}, indent=2), encoding="utf-8")
        save_resolved_config(
            config,
            tmp,
            extra={
                "kind": "sentence-embedder",
                "base_model": settings.base_model,
                "loss": "MultipleNegativesRankingLoss",
                "val": {f"base_{m}": before[m] for m in REPORT_METRICS} | {f"finetuned_{m}": after[m] for m in REPORT_METRICS},
                "seconds": seconds,
            },
        )
    log(f"val (open-book, {before['n']} questions): dense retrieval, {settings.base_model} -> fine-tuned")
    log(format_comparison(before, after, ("base embedder", "fine-tuned")))
    log(f"saved the embedder to {output}")
    log(f"use it: --set index.embed_model={output}, then re-index: python -m pipeline.index --config {config.profile} --set index.embed_model={output} --rebuild")
    log(f"wall time: {seconds['total']:.1f} s (mining {seconds['mining']:.1f} s, training {seconds['training']:.1f} s)")
    return EmbedderRun(output, before, after, seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.embedder",
        description=(
            "Fine-tune the MiniLM bi-encoder on (train question, own answer) with in-batch and mined hard negatives "
            "(MultipleNegativesRankingLoss); prints open-book val retrieval figures before -> after and writes a "
            "sentence-transformers folder to finetune.embedder.output. Hard-negative mining needs the knowledge base "
            "(python -m pipeline.index). Settings: the finetune.embedder section (see --help-config)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=float, default=None, help="Shortcut for --set finetune.embedder.epochs=N.")
    parser.add_argument("--output", default=None, help="Shortcut for --set finetune.embedder.output=DIR.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = []
    if args.epochs is not None:
        extra.append(f"finetune.embedder.epochs={args.epochs}")
    if args.output is not None:
        extra.append(f"finetune.embedder.output={args.output}")

    def body() -> None:
        config = config_from_args(args, extra)
        run(config, show_progress=not args.no_progress, log=lambda m: print(m, flush=True))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
