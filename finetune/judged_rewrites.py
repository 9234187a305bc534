"""HyDE rewrites of the train questions, judged by retrieval: training targets for the rewriter.

    python -m finetune.judged_rewrites --config tiny --limit 20                   # a quick look: 20 questions
    python -m finetune.judged_rewrites --config tiny                              # every train question -> finetune.judged_rewrites.output
    python -m finetune.rewriter        --config tiny --set finetune.rewriter.targets=runs/tiny/synthetic/judged_rewrites.jsonl

Why: finetune.rewriter trains the LM to write each question's gold answer, text a 135M model
cannot reproduce; what retrieval needs is a passage that FINDS the gold one. So the base LM
(`generator.model`, no adapter) samples `finetune.judged_rewrites.samples` rewrites per train
question with the rewriter's own inference prompt (rewrite/prompts.py `hyde_messages`,
`rewrite.max_new_tokens`, cleaned as QueryRewriter cleans them), and each is judged by the rank of
the question's gold passage when retrieving with it as the engine does (pipeline/engine.py
`_round`: `QueryBundle(query_str=question, custom_embedding_strs=[question, passage])`, the
project's retriever, `retriever` default `retrieve.mode`). Rejection-sampling fine-tuning (STaR,
ReST) on retrieval's verdict instead of the gold text.

The corpus: every distinct answer of the train split, one passage each, embedded and searched in
memory (the answers-only corpus of eval.retrieval's open-book protocol, without val and test, so
building targets never touches evaluation data); the hypothetical passage is the rewrite alone,
as finetune.rewriter's evaluation formats it. Not the persisted knowledge base: its nodes hold the
train questions themselves, so a train question alone finds its own node first nearly always and
no rewrite could ever do better. A question's gold passage is the passage of its own answer.

The choice (`select_judged_rewrites`, pure): the best sample is the one ranking the gold passage
highest. Ties are broken by the rank of the gold passage when searching with the sample ALONE
(then by the earliest sample): with [question, rewrite] the question's own vector often keeps the
gold passage first whatever the rewrite says (on 4 seed questions, SmolLM2 rewrites about the
wrong topic still tied at rank 1), so among tied samples the one whose own text points at the
gold passage is the better target. The best sample is kept when it ranks the gold passage
strictly higher than the question alone does, or at rank 1 when the question alone does too
(nothing can beat rank 1, and leaving out every question retrieval already gets right would
train the rewriter on hard questions only); a tie below rank 1, or a gold passage no sample finds,
drops the question.

Output (`finetune.judged_rewrites.output`, JSONL, one kept question a line): `question`,
`rewrite` (the training target), `gold_rank`, `question_alone_rank` (null: not in the top
`depth`), `rewrite_alone_rank` (the tie-breaker; null: not found or not searched), `gold_id`,
`sample`. `<stem>.report.json` beside it has the counts and MRR@depth of the
question alone vs the chosen rewrites. Resumable (finetune/synthetic.py): questions are done in
chunks of `chunk_size` appended to a hidden work file; the output is written atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from finetune.common import seed_everything
from finetune.reranker import TrainingSetupError, query_vectors
from finetune.synthetic import ChunkLog, builder_digest, builder_parser, chunks, finish, run_builder, sample_texts
from pipeline.config import Config
from pipeline.data import DataError, load_split
from pipeline.index import KnowledgeBase, qa_node_id
from pipeline.metrics import first_relevant_rank
from pipeline.models import load_llm

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import TextNode


# --------------------------------------------------------------------------------------------
# the choice (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgedRewrite:
    """The rewrite chosen for one question, and the ranks that chose it."""

    question: str
    rewrite: str
    gold_rank: int
    question_alone_rank: Optional[int]  # None: the gold passage is not in the question's own list
    gold_id: str
    sample: int  # index of the chosen sample among the question's samples
    rewrite_alone_rank: Optional[int] = None  # searching with the rewrite alone (the tie-breaker)

    def as_row(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "rewrite": self.rewrite,
            "gold_rank": self.gold_rank,
            "question_alone_rank": self.question_alone_rank,
            "rewrite_alone_rank": self.rewrite_alone_rank,
            "gold_id": self.gold_id,
            "sample": self.sample,
        }


def rank_of(gold_id: str, ranked: Sequence[str]) -> Optional[int]:
    """1-based position of `gold_id` in `ranked`, None when it is not there."""
    return first_relevant_rank(ranked, {gold_id})


def clean_rewrite(raw: str) -> str:
    """An LM's HyDE text -> the rewrite, exactly as QueryRewriter cleans it ('' when nothing is left)."""
    from pipeline.generate import clean_answer

    return " ".join(clean_answer(raw or "").split())


def select_judged_rewrites(
    question: str,
    gold_id: str,
    samples: Sequence[str],
    ranked_per_sample: Sequence[Sequence[str]],
    ranked_alone: Sequence[str],
    ranked_sample_alone: Optional[Sequence[Sequence[str]]] = None,
) -> Optional[JudgedRewrite]:
    """Choose among one question's sampled rewrites by the rank of its gold passage.

    `ranked_per_sample[i]`: passage ids retrieved with [question, sample i] (best first; any list
    for an empty sample); `ranked_alone`: those retrieved with the question alone;
    `ranked_sample_alone[i]` (optional): those retrieved with sample i alone. Empty samples are
    ignored. The best sample ranks `gold_id` highest; ties go to the sample ranking it higher on
    its own (not found counts as worse than any rank), then to the earliest. It is returned when
    its rank is strictly better than the question alone's (a gold passage the question alone misses
    counts as worse than any rank), or 1 when the question alone's is 1 too; otherwise None.
    Inputs are not changed."""
    if len(samples) != len(ranked_per_sample) or (ranked_sample_alone is not None and len(ranked_sample_alone) != len(samples)):
        given = f"{len(ranked_per_sample)} ranked lists" + (f" and {len(ranked_sample_alone)} sample-alone lists" if ranked_sample_alone is not None else "")
        raise ValueError(f"select_judged_rewrites: {len(samples)} samples but {given}; pass one list per sample")
    alone = rank_of(gold_id, ranked_alone)
    missing = float("inf")
    best: Optional[tuple[int, float, int, str, Optional[int]]] = None  # (rank, own rank, sample index, text, own rank)
    for index, (sample, ranked) in enumerate(zip(samples, ranked_per_sample)):
        text = " ".join((sample or "").split())
        rank = rank_of(gold_id, ranked) if text else None
        if rank is None:
            continue
        own = rank_of(gold_id, ranked_sample_alone[index]) if ranked_sample_alone is not None else None
        key = (rank, own if own is not None else missing, index, text, own)
        if best is None or key[:3] < best[:3]:
            best = key
    if best is None:
        return None
    rank, _, index, text, own = best
    if alone is not None and rank > alone:
        return None
    if alone is not None and rank == alone and rank != 1:
        return None
    return JudgedRewrite(question, text, rank, alone, gold_id, index, own)


# --------------------------------------------------------------------------------------------
# the corpus and the builder
# --------------------------------------------------------------------------------------------


def answer_corpus(records: Sequence[dict[str, str]]) -> tuple[list["TextNode"], list[str]]:
    """One passage per distinct answer (its text only, nothing else embedded or searched), id the
    QA node id of the first pair with that answer; and the gold passage id of every record."""
    from llama_index.core.schema import TextNode


    nodes: list[TextNode] = []
    by_answer: dict[str, str] = {}
    gold: list[str] = []
    for record in records:
        answer = record["answer"].strip()
        if answer not in by_answer:
            node_id = qa_node_id(record["question"], record["answer"])
            by_answer[answer] = node_id
            keys = ["question", "answer", "kind"]
            nodes.append(TextNode(id_=node_id, text=answer, metadata={"question": record["question"], "answer": record["answer"], "kind": "answer"}, excluded_embed_metadata_keys=keys, excluded_llm_metadata_keys=keys))
        gold.append(by_answer[answer])
    return nodes, gold


def build_judged_rewrites(
    config: Config,
    *,
    llm: Any = None,
    embed_model: "BaseEmbedding | None" = None,
    output: str | Path | None = None,
    limit: Optional[int] = None,
    resume: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the chosen rewrite of every train question that has one (see the module doc);
    returns the report. `llm`: the LM that samples (default: the base `generator.model`, loaded
    on the first chunk that needs it); `embed_model`: the corpus embedder (default: index.embed_model)."""
    from llama_index.core.schema import QueryBundle
    from tqdm.auto import tqdm

    from pipeline.retrieve import build_retriever
    from rewrite.prompts import hyde_messages

    settings = config.finetune.judged_rewrites
    output = Path(output or settings.output)
    limit = limit if limit is not None else settings.limit
    mode = settings.retriever or config.retrieve.mode
    started = time.perf_counter()
    seed_everything(config.finetune.seed)
    train = load_split(config.data.dir, "train")
    nodes, gold_ids = answer_corpus(train)
    first: dict[str, int] = {}  # a question asked twice is judged once, for its first pair
    for i, record in enumerate(train):
        first.setdefault(record["question"], i)
    order = sorted(first.values())
    every = len(order)
    order = order[:limit] if limit is not None else order
    if not order:
        raise TrainingSetupError(f"{config.data.dir}/train.jsonl has no questions to rewrite")
    digest = builder_digest(config, "judged-rewrites", {**vars(settings), "rewrite.max_new_tokens": config.rewrite.max_new_tokens})
    work = ChunkLog(output, digest, resume=resume)
    done = work.load()
    todo = [i for i in order if train[i]["question"] not in done]
    log(f"judged rewrites: {len(order)} train questions, {len(order) - len(todo)} done before, {len(todo)} to go; {settings.samples} samples each, judged by the {mode} retriever over {len(nodes)} train answers")
    kb = None
    try:
        if todo:
            llm = llm if llm is not None else load_llm(config, adapter=None, verbose=show_progress)
            kb = KnowledgeBase.from_nodes(config, nodes, embed_model=embed_model, show_progress=show_progress)
            retriever = build_retriever(config, mode=mode, top_k=min(settings.depth, len(nodes)), kb=kb)
        bar = tqdm(total=len(order), initial=len(order) - len(todo), desc="judged rewrites", unit="q", disable=not show_progress)
        for chunk in chunks(todo, settings.chunk_size):
            questions = [train[i]["question"] for i in chunk]
            raw = sample_texts(llm, [hyde_messages(q) for q in questions], n=settings.samples, max_new_tokens=config.rewrite.max_new_tokens, temperature=settings.temperature)
            vectors = query_vectors(kb, questions) if mode != "bm25" else None
            entries = []
            for j, (i, question) in enumerate(zip(chunk, questions)):
                alone = [h.node.node_id for h in retriever.retrieve(QueryBundle(query_str=question, embedding=list(vectors[j]) if vectors is not None else None))]
                samples = [clean_rewrite(t) for t in raw[j]]
                searched: dict[str, tuple[list[str], list[str]]] = {}  # a sample drawn twice is searched once
                for text in dict.fromkeys(s for s in samples if s):
                    with_question = retriever.retrieve(QueryBundle(query_str=question, custom_embedding_strs=[question, text]))  # as the engine searches
                    on_its_own = retriever.retrieve(QueryBundle(query_str=text))  # the tie-breaker
                    searched[text] = ([h.node.node_id for h in with_question], [h.node.node_id for h in on_its_own])
                ranked = [searched[s][0] if s else [] for s in samples]
                ranked_own = [searched[s][1] if s else [] for s in samples]
                chosen = select_judged_rewrites(question, gold_ids[i], samples, ranked, alone, ranked_own)
                entries.append({
                    "key": question,
                    "question_alone_rank": rank_of(gold_ids[i], alone),
                    "sample_ranks": [rank_of(gold_ids[i], r) if s else None for s, r in zip(samples, ranked)],
                    "sample_alone_ranks": [rank_of(gold_ids[i], r) if s else None for s, r in zip(samples, ranked_own)],
                    "empty_samples": sum(not s for s in samples),
                    "chosen": chosen.as_row() if chosen is not None else None,
                })
            work.append(entries)
            done.update({e["key"]: e for e in entries})
            bar.update(len(chunk))
        bar.close()
    finally:
        if kb is not None:
            kb.close()

    judged = [done[train[i]["question"]] for i in order]
    rows = [e["chosen"] for e in judged if e["chosen"] is not None]
    reciprocal = lambda rank: 1.0 / rank if rank else 0.0  # noqa: E731
    report = {
        "kind": "judged-rewrites",
        "model": config.generator.model,
        "retriever": mode,
        "depth": settings.depth,
        "samples_per_question": settings.samples,
        "temperature": settings.temperature,
        "corpus": "train answers",
        "corpus_size": len(nodes),
        "questions": len(judged),
        "kept": len(rows),
        "kept_strictly_better": sum(r["question_alone_rank"] is None or r["gold_rank"] < r["question_alone_rank"] for r in rows),
        "kept_tied_at_rank_1": sum(r["gold_rank"] == 1 and r["question_alone_rank"] == 1 for r in rows),
        # how many chosen rewrites find the gold passage within `depth` on their own (not the question's vector)
        "kept_rewrite_alone_finds_gold": sum(r["rewrite_alone_rank"] is not None for r in rows),
        "dropped_no_sample_as_good": sum(e["chosen"] is None and any(r is not None for r in e["sample_ranks"]) for e in judged),
        "dropped_gold_never_found": sum(e["chosen"] is None and all(r is None for r in e["sample_ranks"]) for e in judged),
        "empty_samples": sum(e["empty_samples"] for e in judged),
        # MRR@depth of the question alone vs. the chosen rewrite where one was kept (else the question alone)
        f"mrr@{settings.depth}_question_alone": round(sum(reciprocal(e["question_alone_rank"]) for e in judged) / len(judged), 4),
        f"mrr@{settings.depth}_with_chosen": round(sum(reciprocal(e["chosen"]["gold_rank"] if e["chosen"] else e["question_alone_rank"]) for e in judged) / len(judged), 4),
        "resumed_questions": len(order) - len(todo),
        "seconds": round(time.perf_counter() - started, 1),
    }
    # a limited run keeps its work file: the run over every question continues from it
    finish(output, rows, report, work if len(order) == every else None)
    log(
        f"judged rewrites: kept {report['kept']} of {report['questions']} questions ({report['kept_strictly_better']} rank the gold passage higher than the question alone, "
        f"{report['kept_tied_at_rank_1']} tie at rank 1); MRR@{settings.depth} {report[f'mrr@{settings.depth}_question_alone']:.3f} alone -> "
        f"{report[f'mrr@{settings.depth}_with_chosen']:.3f} with the chosen rewrites; wrote {output}"
    )
    return report


def judged_targets(path: str | Path, records: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """`records` (the train split) whose question has a judged rewrite in `path`, in their order,
    as new records with the rewrite as the answer; the others are left out (finetune.rewriter.targets)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"finetune.rewriter.targets={path}: no such file; build it with python -m finetune.judged_rewrites (same --config and --set), or set finetune.rewriter.targets=null")
    rewrites: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg}); rebuild it with python -m finetune.judged_rewrites") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip() for k in ("question", "rewrite")):
            raise DataError(f"{path}:{number}: a judged rewrite needs non-empty 'question' and 'rewrite' strings; got {str(row)[:80]}; rebuild it with python -m finetune.judged_rewrites")
        rewrites.setdefault(row["question"], row["rewrite"])
    if not rewrites:
        raise DataError(f"{path}: no judged rewrites in it; build it with python -m finetune.judged_rewrites, or set finetune.rewriter.targets=null")
    questions = {r["question"] for r in records}
    strangers = [q for q in rewrites if q not in questions]
    if strangers:
        raise DataError(f"{path}: {len(strangers)} of its {len(rewrites)} questions are not in the train split (first: {strangers[0]!r}); it was built from other data: rebuild it with the same data.dir")
    return [{**r, "answer": rewrites[r["question"]]} for r in records if r["question"] in rewrites]


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    return builder_parser(
        "python -m finetune.judged_rewrites",
        __doc__,
        output_help="Output JSONL. Default: finetune.judged_rewrites.output (what finetune.rewriter.targets should name).",
        limit_help="Only the first N train questions (shortcut for --set finetune.judged_rewrites.limit=N); the corpus stays every train answer.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_builder(build_parser().parse_args(argv), "judged_rewrites", build_judged_rewrites)


if __name__ == "__main__":
    sys.exit(main())
