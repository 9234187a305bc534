"""Fine-tune the cross-encoder reranker on the train split (fine-tuning FOR retrieval).

    python -m pipeline.index     --config tiny                        # the knowledge base: mining needs it
    python -m finetune.reranker  --config tiny
    python -m finetune.reranker  --config tiny --set data.dir=runs/seed/data --set run_dir=runs/seed
    python -m finetune.reranker  --config tiny --set finetune.reranker.epochs=2 --set finetune.reranker.loss=listwise

What it does:

1. Start from `finetune.reranker.base_model`: by default the bundled all-MiniLM-L6-v2 encoder
   (offline) with a fresh one-logit head (`BertForSequenceClassification`, num_labels=1); a hub
   cross-encoder (e.g. cross-encoder/ms-marco-MiniLM-L6-v2) keeps its own head.
2. Examples from the train split: (question, its own answer) is the positive; hard negatives are
   the answers of the passages the project's hybrid retriever returns for the question over the
   knowledge base (`pipeline.index`), the question's own node and any passage with the same answer
   text excluded (those are not negatives); plus random answers of other train questions.
3. Train with the sentence-transformers v4+ `CrossEncoderTrainer`. Loss (`finetune.reranker.loss`):
   `bce` (default) is binary cross-entropy on (question, passage, 1|0) pairs with the positive
   weighted by the number of negatives per question, so both classes carry equal weight; it is the
   loss of the MS MARCO cross-encoders and calibrates the sigmoid score that the agent loop
   thresholds. `listwise` is softmax cross-entropy over each question's positive and its hard
   negatives (+ in-batch random ones): it optimises "the positive first" directly. On short val
   runs neither moved off its chance loss until the leftover [CLS] pooler of the bi-encoder
   checkpoint was reset (`reset_pooler`); the default stays bce.
4. Evaluate on val before and after, open-book protocol (the corpus is every answer of
   train+val+test, the gold passage is the question's own answer): the retriever's ranking of its
   top `eval_candidates` (base) -> the same candidates reranked, MRR@10, nDCG@10, R@1 with
   bootstrap 95% intervals.
5. Save atomically (built in a temporary folder, renamed into place): the model, `ragft_config.yaml`
   (resolved config + the val figures), `train_log.json` (trainer log history, example counts, wall
   times) and `eval_val.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from finetune.common import seed_everything
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import load_split, open_book_corpus
from pipeline.errors import UserFacingError, run_cli
from pipeline.fileio import atomic_directory
from pipeline.index import KnowledgeBase, KnowledgeBaseError, open_index, qa_node_id
from pipeline.metrics import retrieval_per_query, summarize
from pipeline.models import check_model_source, resolve_model

if TYPE_CHECKING:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import BaseNode
    from sentence_transformers import CrossEncoder

    from pipeline.index import KnowledgeBase

logger = logging.getLogger(__name__)

TRAIN_LOG_NAME = "train_log.json"
EVAL_NAME = "eval_val.json"
REPORT_METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@5")


class TrainingSetupError(UserFacingError, RuntimeError):
    """Something a training run needs is missing (knowledge base, data); the message says the fix."""


# --------------------------------------------------------------------------------------------
# knowledge base and hard-negative mining
# --------------------------------------------------------------------------------------------


def open_knowledge_base(config: Config) -> "KnowledgeBase":
    """The persisted knowledge base, or a clear error saying how to build it."""
    try:
        kb = open_index(config)
        kb.manifest  # noqa: B018  (raises now when there is no usable index)
    except KnowledgeBaseError as exc:
        raise TrainingSetupError(
            f"hard-negative mining needs the knowledge base at {config.index.dir}, which cannot be used: {exc}. "
            f"Build it first with the same settings: python -m pipeline.index --config {config.profile}"
            + _overrides_hint(config)
        ) from None
    return kb


def _overrides_hint(config: Config) -> str:
    return f" --set data.dir={config.data.dir} --set run_dir={config.run_dir}" if config.profile != "custom" else ""


def passage_text(node: "BaseNode") -> str:
    """What the reranker is trained and evaluated on: a QA node's answer (the open-book passage),
    or a document chunk's text."""
    from llama_index.core.schema import MetadataMode

    answer = node.metadata.get("answer")
    return answer if isinstance(answer, str) and answer.strip() else node.get_content(metadata_mode=MetadataMode.NONE)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def mine_hard_negatives(
    retriever: "BaseRetriever",
    records: Sequence[dict[str, str]],
    num: int,
    *,
    show_progress: bool = True,
    desc: str = "mining hard negatives",
    embeddings: Sequence[Sequence[float]] | None = None,
) -> list[list[str]]:
    """For each record, the passages of the retriever's best hits that are not its positive.

    A hit is the positive when it is the record's own node (same id as ingestion gives it) or when
    its passage has the same text as the record's answer (a duplicate answer is no negative). At
    most `num` per record, in the retriever's order (hardest first), without repeats. `embeddings`:
    the questions' query vectors computed in one batch (`query_vectors`), else one by one."""
    from llama_index.core.schema import QueryBundle
    from tqdm.auto import tqdm


    if num <= 0:
        return [[] for _ in records]
    out: list[list[str]] = []
    for i, record in enumerate(tqdm(records, desc=desc, unit="q", disable=not show_progress)):
        bundle = QueryBundle(query_str=record["question"], embedding=list(embeddings[i]) if embeddings is not None else None)
        own_id = qa_node_id(record["question"], record["answer"])
        positive = _norm(record["answer"])
        negatives: list[str] = []
        seen = {positive}
        for hit in retriever.retrieve(bundle):
            if hit.node.node_id == own_id or hit.node.metadata.get("id") == own_id:
                continue
            text = passage_text(hit.node)
            key = _norm(text)
            if key in seen:
                continue
            seen.add(key)
            negatives.append(text)
            if len(negatives) >= num:
                break
        out.append(negatives)
    return out


def query_vectors(kb: "KnowledgeBase", questions: Sequence[str]) -> list[list[float]]:
    """Query vectors of many questions in batches, with the kb's embedder (as retrieval does)."""
    from pipeline.retrieve import DenseRetriever

    return DenseRetriever(kb, top_k=1).embed_queries(list(questions))


def random_negatives(records: Sequence[dict[str, str]], index: int, num: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """`num` answers of other records, none equal to this record's answer or to `exclude`."""
    if num <= 0 or len(records) < 2:
        return []
    banned = {_norm(records[index]["answer"]), *map(_norm, exclude)}
    picked: list[str] = []
    for _ in range(num * 20):  # bounded: tiny data with many duplicate answers cannot loop forever
        other = records[rng.randrange(len(records))]["answer"]
        if _norm(other) not in banned:
            banned.add(_norm(other))
            picked.append(other)
            if len(picked) == num:
                break
    return picked


@dataclass
class Example:
    """One training question: its positive passage and its negatives (hard first)."""

    query: str
    positive: str
    hard: list[str] = field(default_factory=list)
    random: list[str] = field(default_factory=list)

    @property
    def negatives(self) -> list[str]:
        return [*self.hard, *self.random]


def build_examples(records: Sequence[dict[str, str]], hard: Sequence[Sequence[str]], num_random: int, seed: int) -> list[Example]:
    """Examples from records, their mined hard negatives and `num_random` random negatives each."""
    if len(hard) != len(records):
        raise ValueError(f"{len(hard)} hard-negative lists for {len(records)} records; they must pair up")
    rng = random.Random(seed)
    return [
        Example(r["question"], r["answer"], list(h), random_negatives(records, i, num_random, rng, exclude=h))
        for i, (r, h) in enumerate(zip(records, hard))
    ]


def bce_rows(examples: Sequence[Example]) -> dict[str, list]:
    """Columns query, passage, label (1.0 positive, 0.0 negative) for BinaryCrossEntropyLoss."""
    rows: dict[str, list] = {"query": [], "passage": [], "label": []}
    for ex in examples:
        for passage, label in [(ex.positive, 1.0), *((n, 0.0) for n in ex.negatives)]:
            rows["query"].append(ex.query)
            rows["passage"].append(passage)
            rows["label"].append(label)
    return rows


def listwise_rows(examples: Sequence[Example], num_negatives: int, records: Sequence[dict[str, str]], seed: int) -> dict[str, list]:
    """Columns query, positive, negative_1..negative_n for the listwise loss; a question with fewer
    mined negatives than n gets random answers in the free slots (the columns must be full)."""
    rng = random.Random(seed + 1)
    columns: dict[str, list] = {"query": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(num_negatives)}}
    answers_index = {r["answer"]: i for i, r in enumerate(records)}
    for ex in examples:
        negatives = ex.hard[:num_negatives]
        if len(negatives) < num_negatives:
            idx = answers_index.get(ex.positive, 0)
            negatives += random_negatives(records, idx, num_negatives - len(negatives), rng, exclude=negatives)
        if len(negatives) < num_negatives:
            continue  # not enough distinct passages in tiny data: skip rather than repeat one
        columns["query"].append(ex.query)
        columns["positive"].append(ex.positive)
        for i, negative in enumerate(negatives):
            columns[f"negative_{i + 1}"].append(negative)
    return columns


# --------------------------------------------------------------------------------------------
# open-book evaluation: retriever candidates -> reranked, retrieval metrics with 95% intervals
# --------------------------------------------------------------------------------------------


def openbook_setup(config: Config, split: str, *, embed_model: Any = None, show_progress: bool = True):
    """The open-book protocol exactly as `eval.retrieval` defines it (every answer of
    train+val+test a passage, an in-memory knowledge base over them), the questions of `split` and
    their relevant passage ids. Returns (kb, questions, relevant); close the kb when done."""
    nodes, questions, relevant = open_book_corpus(config.data.dir)
    kb = KnowledgeBase.from_nodes(config, nodes, embed_model=embed_model, show_progress=show_progress)
    return kb, questions[split], relevant[split]


@dataclass
class CandidateSet:
    """Per question: the retriever's candidates (ids and passages, best first) and the gold ids."""

    questions: list[str]
    ids: list[list[str]]
    passages: list[list[str]]
    relevant: list[set[str]]


def openbook_candidates(config: Config, split: str, k: int, *, limit: int | None = None, embed_model: Any = None, mode: str | None = None, show_progress: bool = True) -> CandidateSet:
    """Candidates of the open-book protocol for the questions of `split` (see eval.retrieval)."""
    from pipeline.retrieve import build_retriever

    kb, queries, relevant = openbook_setup(config, split, embed_model=embed_model, show_progress=show_progress)
    if limit is not None:
        queries, relevant = queries[:limit], relevant[:limit]
    try:
        retriever = build_retriever(config, mode=mode or config.retrieve.mode, top_k=k, kb=kb)
        vectors = query_vectors(kb, queries) if (mode or config.retrieve.mode) != "bm25" else None
        hits = retrieve_each(retriever, queries, vectors, desc=f"retrieving {split} candidates", show_progress=show_progress)
    finally:
        kb.close()
    ids = [[h.node.node_id for h in found] for found in hits]
    passages = [[passage_text(h.node) for h in found] for found in hits]
    return CandidateSet(list(queries), ids, passages, [set(r) for r in relevant])


def retrieve_each(retriever: "BaseRetriever", questions: Sequence[str], vectors: Sequence[Sequence[float]] | None, *, desc: str, show_progress: bool = True) -> list[list[Any]]:
    """The retriever's hits (best first) for each question; `vectors`: their query vectors computed
    in one batch (query_vectors), or None to let the retriever embed (or not, for BM25)."""
    from llama_index.core.schema import QueryBundle
    from tqdm.auto import tqdm

    return [
        retriever.retrieve(QueryBundle(query_str=question, embedding=list(vectors[i]) if vectors is not None else None))
        for i, question in enumerate(tqdm(questions, desc=desc, unit="q", disable=not show_progress))
    ]


def rerank_order(score_fn: Callable[[str, Sequence[str]], Sequence[float]], candidates: CandidateSet, *, show_progress: bool = True) -> list[list[str]]:
    """Candidate ids reordered by `score_fn(question, passages)` (stable: ties keep retrieval order)."""
    from tqdm.auto import tqdm

    out = []
    for question, ids, passages in tqdm(
        list(zip(candidates.questions, candidates.ids, candidates.passages)), desc="reranking", unit="q", disable=not show_progress
    ):
        scores = list(score_fn(question, passages)) if passages else []
        order = sorted(range(len(ids)), key=lambda i: -float(scores[i]))
        out.append([ids[i] for i in order])
    return out


def ranking_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], *, seed: int = 42, samples: int = 1000) -> dict[str, Any]:
    """Recall@1/5/10/20, MRR@10, nDCG@10, hit rate with bootstrap 95% intervals (eval.metrics)."""
    return summarize(retrieval_per_query(ranked, relevant), samples=samples, seed=seed)


def cross_encoder_scorer(model: "CrossEncoder", batch_size: int) -> Callable[[str, Sequence[str]], Sequence[float]]:
    """score_fn for `rerank_order` from an in-memory CrossEncoder, through the same postprocessor
    code path as inference (`CrossEncoderReranker.score_pairs`)."""
    from rerank.cross_encoder import CrossEncoderReranker

    reranker = CrossEncoderReranker.from_model(model, batch_size=batch_size)
    return reranker.score_pairs


def format_comparison(before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str] = ("base", "reranked")) -> str:
    """One line per metric: base [ci] -> reranked [ci] (delta)."""
    lines = [f"{'metric':<10} {labels[0]:>22} -> {labels[1]:<22} delta"]
    for metric in REPORT_METRICS:
        if metric not in before:
            continue
        b, a = before[metric], after[metric]
        bl, bh = before["ci95"][metric]
        al, ah = after["ci95"][metric]
        lines.append(f"{metric:<10} {b:.3f} [{bl:.3f}, {bh:.3f}] -> {a:.3f} [{al:.3f}, {ah:.3f}]  {a - b:+.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def new_cross_encoder(config: Config, *, base_model: str | None = None) -> "CrossEncoder":
    """The starting point: the base encoder with a one-logit head (fresh unless it has one)."""
    from pipeline.encoders import load_cross_encoder

    settings = config.finetune.reranker
    device = "cpu" if config.generator.device == "cpu" else "auto"
    reference = check_model_source(config, base_model or settings.base_model, "finetune.reranker.base_model")
    model = load_cross_encoder(reference, device=device, max_length=settings.max_length, num_labels=1, trust_remote_code=config.generator.trust_remote_code, allow_pickle=config.security.allow_pickle_weights)
    architectures = getattr(model.model.config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        reset_pooler(model)
    if settings.layers is not None:
        keep_first_layers(model, settings.layers)
    return model


def keep_first_layers(model: "CrossEncoder", layers: int) -> None:
    """Drop every transformer layer of the encoder after the first `layers` (in place, with its
    config), so training and inference run the shallower model (finetune.reranker.layers)."""
    key = "finetune.reranker.layers"
    encoder = getattr(getattr(model.model, "base_model", None), "encoder", None)
    stack = getattr(encoder, "layer", None)
    if stack is None:
        raise ConfigError(f"{key}={layers}: {type(model.model).__name__} has no encoder.layer stack to cut (BERT-like encoders have one). Fix: --set {key}=null")
    if layers > len(stack):
        raise ConfigError(f"{key}={layers}: the model has only {len(stack)} layers. Fix: --set {key}={len(stack)} or fewer, or null for all")
    del stack[layers:]
    model.model.config.num_hidden_layers = layers


def reset_pooler(model: "CrossEncoder") -> bool:
    """Make BERT's pooler the identity (tanh(h_CLS)) when the head is fresh.

    Why: a sentence-embedding checkpoint (all-MiniLM-L6-v2) was trained with MEAN pooling; its
    [CLS] pooler layer is a leftover that squashes every input to nearly the same vector (measured:
    per-dimension spread across pairs ~0.04 against ~0.2 for h_CLS itself), so a fresh head on top
    of it sees almost no signal and BCE/listwise losses stay at their chance values for hundreds of
    steps. tanh(h_CLS) keeps the encoder's variation and the head learns at once."""
    import torch

    pooler = getattr(getattr(model.model, "bert", None), "pooler", None)
    dense = getattr(pooler, "dense", None)
    if dense is None or dense.weight.shape[0] != dense.weight.shape[1]:
        return False
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
        dense.bias.zero_()
    return True


def train_cross_encoder(
    model: "CrossEncoder",
    examples: Sequence[Example],
    config: Config,
    *,
    records: Sequence[dict[str, str]],
    work_dir: str | Path,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train `model` in place on `examples` with the configured loss; returns the log history."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MultipleNegativesRankingLoss

    settings = config.finetune.reranker
    seed = config.finetune.seed
    if settings.loss == "bce":
        rows = bce_rows(examples)
        negatives_per_positive = max(1.0, (len(rows["label"]) - sum(rows["label"])) / max(1.0, sum(rows["label"])))
        # pos_weight balances the classes: without it the head learns "mostly negative" first
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(negatives_per_positive))
        batch_size = settings.batch_size
    else:
        rows = listwise_rows(examples, settings.hard_negatives or 1, records, seed)
        # random negatives come from the other questions of the batch (in-batch), for free
        loss = MultipleNegativesRankingLoss(model, num_negatives=settings.random_negatives or None, scale=1.0, activation_fn=None)
        # a listwise row holds 1 + hard + random pairs: keep the pairs per step near batch_size
        batch_size = max(2, settings.batch_size // (1 + (settings.hard_negatives or 1) + settings.random_negatives))
    dataset = Dataset.from_dict(rows)
    if len(dataset) == 0:
        raise TrainingSetupError("no training examples: the train split is empty or has too few distinct answers")
    return _fit(model, dataset, loss, config, batch_size=batch_size, epochs=settings.epochs, learning_rate=settings.learning_rate, work_dir=work_dir, show_progress=show_progress)


def _fit(model: "CrossEncoder", dataset: Any, loss: Any, config: Config, *, batch_size: int, epochs: float, learning_rate: float, work_dir: str | Path, show_progress: bool) -> list[dict[str, Any]]:
    """One CrossEncoderTrainer run (linear schedule with warm-up, no checkpoints); the log history."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    seed = config.finetune.seed
    steps_per_epoch = max(1, -(-len(dataset) // batch_size))
    total_steps = max(1, int(steps_per_epoch * epochs))
    args = CrossEncoderTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=int(config.finetune.reranker.warmup_ratio * total_steps),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_strategy="steps",
        logging_steps=max(1, min(25, total_steps // 10)),
        logging_first_step=True,
        save_strategy="no",  # the run is minutes long; the model is saved once, atomically, at the end
        eval_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        use_cpu=str(model.device) == "cpu",
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    model.eval()
    return list(trainer.state.log_history)


@dataclass
class RerankerRun:
    output: Path
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: dict[str, float]
    counts: dict[str, int]


def run(config: Config, *, show_progress: bool = True, log: Callable[[str], None] = print) -> RerankerRun:
    """The whole command: mine, build examples, evaluate base, train, evaluate, save."""
    from pipeline.retrieve import build_retriever

    settings = config.finetune.reranker
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    seed_everything(config.finetune.seed)
    # a DataError already names the file, the row and the fix (python -m pipeline.prepare)
    train = load_split(config.data.dir, "train")
    load_split(config.data.dir, "val")  # fail before any work when val is missing
    if settings.limit is not None:
        train = train[: settings.limit]
    # the base model too: mining and the base evaluation take minutes on a real knowledge base
    resolve_model(check_model_source(config, settings.base_model, "finetune.reranker.base_model"))

    # 1. hard negatives from the knowledge base (train pairs) with the hybrid retriever
    t = time.perf_counter()
    kb = open_knowledge_base(config)
    hard: list[list[str]] = [[] for _ in train]
    if settings.hard_negatives > 0:
        retriever = build_retriever(config, mode="hybrid", top_k=max(settings.mine_candidates, settings.hard_negatives + 2), kb=kb)
        hard = mine_hard_negatives(retriever, train, settings.hard_negatives, show_progress=show_progress, embeddings=query_vectors(kb, [r["question"] for r in train]))
    random_count = settings.random_negatives if settings.loss == "bce" else 0
    examples = build_examples(train, hard, random_count, config.finetune.seed)
    seconds["mining"] = time.perf_counter() - t
    counts = {
        "questions": len(examples),
        "hard_negatives": sum(len(e.hard) for e in examples),
        "random_negatives": sum(len(e.random) for e in examples),
    }
    log(f"examples: {counts['questions']} questions, {counts['hard_negatives']} hard + {counts['random_negatives']} random negatives (loss {settings.loss})")

    # 2. val candidates and the retriever's own ranking (base)
    t = time.perf_counter()
    candidates = openbook_candidates(config, "val", settings.eval_candidates, limit=settings.eval_limit, show_progress=show_progress)
    before = ranking_metrics(candidates.ids, candidates.relevant, seed=config.eval.seed, samples=config.eval.bootstrap_samples)
    seconds["eval_base"] = time.perf_counter() - t

    def evaluate(model: "CrossEncoder") -> dict[str, Any]:
        ranked = rerank_order(cross_encoder_scorer(model, config.rerank.batch_size), candidates, show_progress=show_progress)
        return ranking_metrics(ranked, candidates.relevant, seed=config.eval.seed, samples=config.eval.bootstrap_samples)

    # 3. train
    t = time.perf_counter()
    model = new_cross_encoder(config)
    with tempfile.TemporaryDirectory(prefix="ragft-reranker-") as work:
        history = train_cross_encoder(model, examples, config, records=train, work_dir=work, show_progress=show_progress)
    seconds["training"] = time.perf_counter() - t

    # 4. rerank the same candidates with the trained model
    t = time.perf_counter()
    after = evaluate(model)
    seconds["eval_reranked"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    label = f"{config.retrieve.mode} top-{settings.eval_candidates}"
    log(f"val (open-book, {before['n']} questions): {label} -> reranked by the fine-tuned cross-encoder")
    log(format_comparison(before, after, (label, "reranked")))

    # 5. save atomically: model + resolved config + log + evaluation
    output = Path(settings.output)
    evaluation = {"protocol": "open-book", "split": "val", "candidates": settings.eval_candidates, "retriever": config.retrieve.mode, "base": before, "reranked": after}
    with atomic_directory(output) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / EVAL_NAME).write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
        (tmp / TRAIN_LOG_NAME).write_text(
            json.dumps({"loss": settings.loss, "counts": counts, "seconds": seconds, "log_history": history}, indent=2), encoding="utf-8"
        )
        save_resolved_config(
            config,
            tmp,
            extra={
                "kind": "cross-encoder-reranker",
                "base_model": settings.base_model,
                "loss": settings.loss,
                "val": {f"base_{m}": before[m] for m in REPORT_METRICS} | {f"reranked_{m}": after[m] for m in REPORT_METRICS},
                "seconds": seconds,
            },
        )
    log(f"saved the reranker to {output}; use it with --set rerank.model={output}")
    log(
        f"wall time: {seconds['total']:.1f} s (mining {seconds['mining']:.1f} s, base eval {seconds['eval_base']:.1f} s, "
        f"training {seconds['training']:.1f} s, reranked eval {seconds['eval_reranked']:.1f} s)"
    )
    return RerankerRun(output, before, after, seconds, counts)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.reranker",
        description=(
            "Fine-tune the cross-encoder reranker on the train split: positives are each question's own answer, hard "
            "negatives are mined with the hybrid retriever over the knowledge base (build it first with "
            "python -m pipeline.index), plus random negatives. Prints val MRR@10 / nDCG@10 / R@1 before -> after and the "
            "wall time; writes the model, its resolved config and the training log to finetune.reranker.output. "
            "Settings live in the finetune.reranker section (see --help-config)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--epochs", type=float, default=None, help="Shortcut for --set finetune.reranker.epochs=N.")
    parser.add_argument("--output", default=None, help="Shortcut for --set finetune.reranker.output=DIR.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = []
    if args.epochs is not None:
        extra.append(f"finetune.reranker.epochs={args.epochs}")
    if args.output is not None:
        extra.append(f"finetune.reranker.output={args.output}")

    def body() -> None:
        config = config_from_args(args, extra)
        run(config, show_progress=not args.no_progress, log=lambda m: print(m, flush=True))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
