"""Synthetic questions for every knowledge-base passage, kept by a retrieval consistency filter.

    python -m pipeline.index      --config tiny                                   # the knowledge base: passages and filter
    python -m finetune.doc2query  --config tiny --limit 20                        # a quick look: 20 passages
    python -m finetune.doc2query  --config tiny                                   # every passage -> finetune.doc2query.output
    python -m finetune.reranker   --config tiny --set finetune.reranker.synthetic=runs/tiny/synthetic/doc2query.jsonl

doc2query / InPars / Promptagator: the base LM (`generator.model`, no adapter) reads each passage
of the knowledge base (`passage_text`: a QA node's answer, or a document chunk, as the reranker is
trained on) and writes `finetune.doc2query.questions` questions it answers, one sampled generation
each (`temperature`), through the LM's batched `generate_batch`. Each question is then searched
with the project's retriever over the same knowledge base (`retriever`, default `retrieve.mode`)
and KEPT only when its own passage comes back within the top `top_k` (the consistency filter: a
question the retriever cannot tie to its passage is either off-topic or too vague to be a
positive). `filter_synthetic_queries` also drops questions that are empty, that copy the passage,
and duplicates (of a question kept earlier or of a question already in the knowledge base).

Output (`finetune.doc2query.output`, JSONL, one kept question a line): `question`, `answer` (the
passage text, the reranker's positive), `source_id` (the passage's node id) and `rank` (where the
retriever put the passage for this question, 1..top_k). finetune.reranker reads it with
`--set finetune.reranker.synthetic=PATH` (finetune.embedder with `finetune.embedder.synthetic`)
and mines hard negatives for these questions as for the train questions. `<stem>.report.json`
beside it counts what was generated, kept and dropped, and records the digest of the settings it
was built with (`digest`, `limit`): eval.build reuses the file while they match the config.

Long runs (3 generations per passage, ~1,300 seed passages) are resumable: passages are done in
chunks of `chunk_size`, each finished chunk is appended to a hidden work file beside the output,
and a run with the same settings continues after the last finished chunk (a `--limit` run's work
is reused by the run over every passage). The output itself is written atomically at the end.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from eval.metrics import first_relevant_rank
from finetune.synthetic import builder_parser, run_builder
from pipeline.config import Config

if TYPE_CHECKING:
    from llama_index.core.base.base_retriever import BaseRetriever

    from pipeline.index import KnowledgeBase

DOC2QUERY_SYSTEM = "You write search questions for passages of a technical knowledge base."
DOC2QUERY_ASK = "Write one question, ending with '?', that this passage answers."
DROP_REASONS = ("empty", "copies_passage", "duplicate", "not_retrieved")


# --------------------------------------------------------------------------------------------
# prompt and parsing
# --------------------------------------------------------------------------------------------


def doc2query_messages(passage: str, max_chars: Optional[int] = None) -> list[ChatMessage]:
    """Ask for one question that `passage` answers (the passage cut to `max_chars`)."""
    if not isinstance(passage, str) or not passage.strip():
        raise ValueError(f"doc2query: the passage must be a non-empty string; got {passage!r}")
    text = " ".join(passage.split())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + " ..."
    return [ChatMessage(role=MessageRole.SYSTEM, content=DOC2QUERY_SYSTEM), ChatMessage(role=MessageRole.USER, content=f"Passage: {text}\n\n{DOC2QUERY_ASK}")]


# where a question can start: after a sentence end, a colon or a quote mark, or on a new line
_BOUNDARY = re.compile(r"[.!:;]\s+|[\"\u201c\u201d]|\n")
_LEAD = re.compile(r"^\s*(?:\d+[.)]\s*|[-*\u2022]\s*)?(?:(?:synthetic\s+)?question\s*\d*\s*[:.)-]\s*)?", re.IGNORECASE)


def parse_question(raw: str) -> str:
    """Generated text -> its first question: the clause that ends at the first '?', from the last
    sentence end, colon, quote mark or line break before it, without a numbering or a 'Question:'
    label, whitespace collapsed. '' when the text asks nothing (small LMs often answer with a
    statement: that is no synthetic question)."""
    from pipeline.generate import clean_answer

    text = clean_answer(raw or "")
    if "?" not in text:
        return ""
    clause = _BOUNDARY.split(text[: text.index("?") + 1])[-1]
    return " ".join(_LEAD.sub("", clause).split())


# --------------------------------------------------------------------------------------------
# the consistency filter (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticQuestion:
    """A kept synthetic question: its passage, and where the retriever ranked that passage for it."""

    source_id: str
    question: str
    rank: int


@dataclass
class Filtered:
    kept: list[SyntheticQuestion] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: {reason: 0 for reason in DROP_REASONS})


def question_key(text: str) -> str:
    """What makes two questions the same: their words, lower-cased, punctuation ignored."""
    return " ".join(re.findall(r"\w+", text.lower()))


def copies_passage(question: str, passage: str) -> bool:
    """The question is a run of the passage's own words (or holds the whole passage)."""
    q, p = question_key(question), question_key(passage)
    return bool(q) and bool(p) and (f" {q} " in f" {p} " or f" {p} " in f" {q} ")


def _is_question_text(text: str) -> bool:
    return len(text) >= 8 and re.search(r"[^\W\d_]{3}", text) is not None


def filter_synthetic_queries(
    candidates: Sequence[tuple[str, str]],
    ranked_ids: Sequence[Sequence[str]],
    top_k: int,
    *,
    passages: Mapping[str, str] | None = None,
    existing: Iterable[str] = (),
) -> Filtered:
    """Keep the (passage id, question) candidates whose passage the retriever ranks within `top_k`.

    `ranked_ids[i]`: the passage ids the retriever returned for candidate i, best first (any list
    for an empty question). In order, a candidate is dropped as `empty` (blank, shorter than 8
    characters, or without a word of 3 letters), `copies_passage` (its words are a run of its
    passage's words, `passages[id]`), `duplicate` (same words as a question in `existing` or one
    kept before it: the first kept occurrence wins) or `not_retrieved` (its passage is not in the
    first `top_k` ids). Kept questions have their whitespace collapsed and their 1-based rank.
    Inputs are not changed."""
    if len(candidates) != len(ranked_ids):
        raise ValueError(f"filter_synthetic_queries: {len(candidates)} candidates but {len(ranked_ids)} ranked lists; pass one list per candidate")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"filter_synthetic_queries: top_k must be an integer >= 1; got {top_k!r}")
    passages = passages or {}
    seen = {question_key(q) for q in existing}
    out = Filtered()
    for (source_id, question), ranked in zip(candidates, ranked_ids):
        text = " ".join((question or "").split())
        key = question_key(text)
        rank = first_relevant_rank(ranked, {source_id})
        if not key or not _is_question_text(text):
            reason = "empty"
        elif source_id in passages and copies_passage(text, passages[source_id]):
            reason = "copies_passage"
        elif key in seen:
            reason = "duplicate"
        elif rank is None or rank > top_k:
            reason = "not_retrieved"
        else:
            out.kept.append(SyntheticQuestion(source_id, text, rank))
            seen.add(key)
            continue
        out.dropped[reason] += 1
    return out


# --------------------------------------------------------------------------------------------
# the builder: generate, retrieve, filter, write
# --------------------------------------------------------------------------------------------


def ranked_ids_for(retriever: "BaseRetriever", kb: "KnowledgeBase", questions: Sequence[str], mode: str) -> list[list[str]]:
    """The retriever's passage ids for each question ([] for an empty one); query vectors are
    computed in one batch, as the reranker's mining does."""
    from llama_index.core.schema import QueryBundle

    from finetune.reranker import query_vectors

    todo = [i for i, q in enumerate(questions) if q.strip()]
    vectors = query_vectors(kb, [questions[i] for i in todo]) if mode != "bm25" and todo else None
    out: list[list[str]] = [[] for _ in questions]
    for j, i in enumerate(todo):
        bundle = QueryBundle(query_str=questions[i], embedding=list(vectors[j]) if vectors is not None else None)
        out[i] = [hit.node.node_id for hit in retriever.retrieve(bundle)]
    return out


def build_doc2query(
    config: Config,
    *,
    kb: Optional["KnowledgeBase"] = None,
    llm: Any = None,
    output: str | Path | None = None,
    limit: Optional[int] = None,
    resume: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the kept synthetic questions of every passage (see the module doc); returns the report.

    `kb`: the knowledge base to read passages from and to filter with (default: the persisted one,
    `open_knowledge_base(config)`; a passed one is not closed). `llm`: the LM that writes the
    questions (default: the base `generator.model`, loaded on the first chunk that needs it)."""
    from tqdm.auto import tqdm

    from finetune.common import seed_everything
    from finetune.reranker import TrainingSetupError, open_knowledge_base, passage_text
    from finetune.synthetic import ChunkLog, builder_digest, chunks, finish, sample_texts
    from pipeline.models import load_llm
    from pipeline.retrieve import build_retriever

    settings = config.finetune.doc2query
    output = Path(output or settings.output)
    limit = limit if limit is not None else settings.limit
    mode = settings.retriever or config.retrieve.mode
    started = time.perf_counter()
    seed_everything(config.finetune.seed)
    own_kb = kb is None
    kb = kb if kb is not None else open_knowledge_base(config)
    try:
        every = list(kb.nodes.values())
        nodes = every[:limit] if limit is not None else every
        if not nodes:
            raise TrainingSetupError(f"the knowledge base at {config.index.dir} has no passages; build it with python -m pipeline.index --config {config.profile}")
        passages = {n.node_id: passage_text(n) for n in nodes}
        known = [n.metadata["question"] for n in every if isinstance(n.metadata.get("question"), str)]
        digest = builder_digest(config, "doc2query", settings)
        work = ChunkLog(output, digest, resume=resume)
        done = work.load()
        todo = [n for n in nodes if n.node_id not in done]
        seen = [*known, *(k["question"] for n in nodes if n.node_id in done for k in done[n.node_id]["kept"])]
        log(f"doc2query: {len(nodes)} passages, {len(nodes) - len(todo)} done before, {len(todo)} to go; {settings.questions} questions each, kept when the {mode} retriever ranks the passage within the top {settings.top_k}")
        if todo:
            llm = llm if llm is not None else load_llm(config, adapter=None, verbose=show_progress)
            retriever = build_retriever(config, mode=mode, top_k=settings.top_k, kb=kb)
        bar = tqdm(total=len(nodes), initial=len(nodes) - len(todo), desc="doc2query", unit="passage", disable=not show_progress)
        for chunk in chunks(todo, settings.chunk_size):
            conversations = [doc2query_messages(passages[n.node_id], settings.max_passage_chars) for n in chunk]
            raw = sample_texts(llm, conversations, n=settings.questions, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
            parsed = [[parse_question(t) for t in texts] for texts in raw]
            ranked = ranked_ids_for(retriever, kb, [q for qs in parsed for q in qs], mode)
            entries = []
            for i, (node, questions) in enumerate(zip(chunk, parsed)):
                own_ranked = ranked[i * settings.questions : (i + 1) * settings.questions]
                result = filter_synthetic_queries([(node.node_id, q) for q in questions], own_ranked, settings.top_k, passages=passages, existing=seen)
                seen.extend(k.question for k in result.kept)
                entries.append({"key": node.node_id, "generated": questions, "kept": [{"question": k.question, "rank": k.rank} for k in result.kept], "dropped": result.dropped})
            work.append(entries)
            done.update({e["key"]: e for e in entries})
            bar.update(len(chunk))
        bar.close()
    finally:
        if own_kb:
            kb.close()

    rows = [{"question": k["question"], "answer": passages[n.node_id], "source_id": n.node_id, "rank": k["rank"]} for n in nodes for k in done[n.node_id]["kept"]]
    dropped = {reason: sum(done[n.node_id]["dropped"].get(reason, 0) for n in nodes) for reason in DROP_REASONS}
    report = {
        "kind": "doc2query",
        # what eval.build compares to decide whether this file is still the one the config asks for
        "digest": digest,
        "limit": limit,
        "model": config.generator.model,
        "retriever": mode,
        "top_k": settings.top_k,
        "questions_per_passage": settings.questions,
        "temperature": settings.temperature,
        "passages": len(nodes),
        "generated": sum(len(done[n.node_id]["generated"]) for n in nodes),
        "kept": len(rows),
        "passages_with_a_kept_question": sum(bool(done[n.node_id]["kept"]) for n in nodes),
        "dropped": dropped,
        "kept_by_rank": {str(r): sum(row["rank"] == r for row in rows) for r in range(1, settings.top_k + 1)},
        "resumed_passages": len(nodes) - len(todo),
        "seconds": round(time.perf_counter() - started, 1),
    }
    # a limited run keeps its work file: the run over every passage continues from it
    finish(output, rows, report, work if len(nodes) == len(every) else None)
    log(
        f"doc2query: kept {report['kept']} of {report['generated']} questions ({report['passages_with_a_kept_question']} of {len(nodes)} passages have one); "
        f"dropped {', '.join(f'{n} {r}' for r, n in dropped.items())}; wrote {output}"
    )
    return report


def load_synthetic_pairs(path: str | Path, key: str) -> list[dict[str, str]]:
    """The (question, answer) pairs of a doc2query output, checked row by row (pipeline.data);
    `key`: the setting that named the file, for the error."""
    from pipeline.data import DataError, load_records

    if not Path(path).is_file():
        raise DataError(f"{key}={path}: no such file; build it with python -m finetune.doc2query (same --config and --set), or set {key}=null")
    return load_records(path, fix="rebuild it with python -m finetune.doc2query").records


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    return builder_parser(
        "python -m finetune.doc2query",
        __doc__,
        output_help="Output JSONL. Default: finetune.doc2query.output (what finetune.reranker.synthetic should name).",
        limit_help="Only the first N passages of the knowledge base (shortcut for --set finetune.doc2query.limit=N).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_builder(build_parser().parse_args(argv), "doc2query", build_doc2query)


if __name__ == "__main__":
    sys.exit(main())
