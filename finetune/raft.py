"""RAFT training triples: question + retrieved passages -> answer (Zhang et al. 2024, "RAFT").

    python -m finetune.raft --config tiny                                   # train split -> jsonl
    python -m finetune.raft --config tiny --split val --out runs/tiny/raft/val.jsonl
    python -m finetune.raft --config tiny --set finetune.raft.oracle_prob=1.0 --limit 20

For each question of a split, the "oracle" passage is the question's own answer passage
(exactly the text the knowledge base holds for a QA pair: "Question: ...\\nAnswer: ...").
With probability `finetune.raft.oracle_prob` (default 0.8) the context holds the oracle plus
`num_passages - 1` distractors; otherwise it holds `num_passages` distractors and no oracle, so
the model also learns to answer when retrieval missed. Distractors are hard negatives: the
passages the project's retriever (`finetune.raft.retriever`, hybrid by default) ranks highest
for the question, other than the oracle. The passages are then shuffled. With
`finetune.raft.cite` the target answer cites the oracle as [n] when it is present.

Leakage guard: the knowledge base is built from `data.knowledge_splits` (train); any retrieved
passage from another split, or equal to a pair of a held-out split (val/test), is dropped, and
the builder refuses to make training triples from a held-out split.

The jsonl has one object per question: question, answer, passages, passage_ids, oracle (1-based
position or null), target. `finetune.generator --mode raft` renders each row with
`pipeline.generate.training_example`, the inference prompt. The builder is seeded (`finetune.seed`).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import SPLITS, load_split
from pipeline.errors import UserFacingError, run_cli
from pipeline.fileio import write_jsonl
from pipeline.generate import cite
from pipeline.index import finetuned_embedder_config, open_index, qa_node_id, qa_text

if TYPE_CHECKING:
    from llama_index.core.base.base_retriever import BaseRetriever


def _qa_text(question: str, answer: str) -> str:
    return qa_text(question, answer)


def _qa_id(question: str, answer: str) -> str:
    return qa_node_id(question, answer)


@dataclass(frozen=True)
class RaftExample:
    question: str
    answer: str
    passages: tuple[str, ...]
    passage_ids: tuple[str, ...]
    oracle: Optional[int]  # 1-based position of the oracle passage in `passages`, None if absent
    target: str

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["passages"], row["passage_ids"] = list(self.passages), list(self.passage_ids)
        return row


class LeakError(UserFacingError, ValueError):
    """Training triples were asked for from a held-out split."""


def held_out_ids(records_by_split: dict[str, Sequence[dict[str, str]]]) -> set[str]:
    """Node ids of every QA pair of the given (held-out) splits."""
    return {_qa_id(r["question"], r["answer"]) for records in records_by_split.values() for r in records}


def build_raft_examples(
    records: Sequence[dict[str, str]],
    retriever: "BaseRetriever",
    *,
    num_passages: int = 5,
    oracle_prob: float = 0.8,
    cite_oracle: bool = True,
    seed: int = 42,
    forbidden_ids: Iterable[str] = (),
    allowed_splits: Optional[Sequence[str]] = ("train",),
    fill_pool: Sequence[dict[str, str]] = (),
    show_progress: bool = True,
    context: str = "oracle",
    reranker: Any = None,
) -> list[RaftExample]:
    """One RAFT example per record (records are not modified).

    `context="loo"` (leave-one-out) builds the context the way inference does in the closed-book
    setting: the retriever's candidates minus the question's own pair (and anything forbidden),
    reranked against the question by `reranker` (any LlamaIndex node postprocessor; None keeps the
    retriever's order), the best `num_passages` kept. There is never an oracle; the target is the
    answer. `context="oracle"` is RAFT's mix, described below.

    `retriever` is any LlamaIndex BaseRetriever over the knowledge base; it should return at
    least `num_passages + 1` nodes so that enough distractors remain after the oracle is removed.
    `forbidden_ids` are node ids that must never appear (held-out pairs); `allowed_splits` drops
    QA nodes whose metadata `split` is anything else (None: no split check). When retrieval
    yields too few distractors (BM25 returns only passages sharing a term), random pairs of
    `fill_pool` (the knowledge base's records) fill the context up to `num_passages`, as random
    distractors do in the RAFT paper, so every context has the size inference will give it.
    """
    from tqdm.auto import tqdm

    if num_passages < 1:
        raise ValueError(f"num_passages must be >= 1; got {num_passages}")
    if not 0.0 <= oracle_prob <= 1.0:
        raise ValueError(f"oracle_prob must be between 0 and 1; got {oracle_prob}")
    if context not in ("loo", "oracle"):
        raise ValueError(f"context must be 'loo' or 'oracle'; got {context!r}")
    forbidden = set(forbidden_ids)
    pool = [(_qa_id(r["question"], r["answer"]), _qa_text(r["question"], r["answer"])) for r in fill_pool]
    pool = [(i, t) for i, t in pool if i not in forbidden]
    rng = random.Random(seed)
    examples = []
    short = 0
    for record in tqdm(records, desc="RAFT triples", unit="q", disable=not show_progress, dynamic_ncols=True):
        question, answer = record["question"], record["answer"]
        oracle_id, oracle_text = _qa_id(question, answer), _qa_text(question, answer)
        if oracle_id in forbidden:
            raise LeakError(f"the question {question[:60]!r} belongs to a held-out split; RAFT triples are built from training questions only")
        distractors: list[tuple[str, str]] = []
        kept_hits = []
        seen_texts = {oracle_text.strip()}
        for hit in retriever.retrieve(question):
            node = hit.node
            meta = node.metadata or {}
            node_id = meta.get("id") or node.node_id
            text = node.get_content().strip()
            if node_id == oracle_id or text in seen_texts or node_id in forbidden:
                continue
            if allowed_splits is not None and meta.get("kind", "qa") == "qa" and meta.get("split") not in (None, *allowed_splits):
                continue
            seen_texts.add(text)
            distractors.append((node_id, text))
            kept_hits.append(hit)
        if context == "loo":
            if reranker is not None and kept_hits:
                kept_hits = reranker.postprocess_nodes(kept_hits, query_str=question)
                distractors = [((h.node.metadata or {}).get("id") or h.node.node_id, h.node.get_content().strip()) for h in kept_hits]
            chosen = distractors[:num_passages]
            if len(chosen) < num_passages:
                short += 1
            examples.append(RaftExample(question, answer, tuple(t for _, t in chosen), tuple(i for i, _ in chosen), None, answer.strip()))
            continue
        # one draw per record, always, so that the oracle decisions do not depend on retrieval
        with_oracle = rng.random() < oracle_prob
        need = num_passages - 1 if with_oracle else num_passages
        if len(distractors) < need and pool:
            # a seeded sample of random distractors, drawn from a separate stream so that the
            # oracle draws above stay the same whether or not filling was needed
            filler = random.Random(f"{seed}:{question}").sample(pool, min(len(pool), need + 1 + len(distractors)))
            for node_id, text in filler:
                if len(distractors) >= need:
                    break
                if node_id != oracle_id and text.strip() not in seen_texts:
                    seen_texts.add(text.strip())
                    distractors.append((node_id, text))
        if len(distractors) < need:
            short += 1
        chosen = distractors[:need]
        if with_oracle:
            chosen.append((oracle_id, oracle_text))
        rng.shuffle(chosen)
        oracle_pos = next((i + 1 for i, (node_id, _) in enumerate(chosen) if node_id == oracle_id), None)
        target = cite(answer, [oracle_pos]) if (cite_oracle and oracle_pos is not None) else answer.strip()
        examples.append(
            RaftExample(
                question=question,
                answer=answer,
                passages=tuple(text for _, text in chosen),
                passage_ids=tuple(node_id for node_id, _ in chosen),
                oracle=oracle_pos,
                target=target,
            )
        )
    if short:
        print(f"warning: {short} of {len(records)} questions got fewer than {num_passages} passages; raise the retriever's top_k or grow the knowledge base", file=sys.stderr)
    return examples


def context_size(config: Config) -> int:
    """Passages per training context: for leave-one-out, what `full` gives its generator at
    inference (rerank.top_n passages, reranked or not)."""
    raft = config.finetune.raft
    if raft.context == "oracle":
        return raft.num_passages
    return config.rerank.top_n  # what full reads, reranked or not (pipeline.systems.get_system)


def raft_retriever(config: Config, *, kb: Any = None) -> "BaseRetriever":
    """The retriever of the training contexts, returning one node more than inference needs so
    that the question's own pair can be dropped. Leave-one-out uses `full`'s retriever
    (retrieve.mode over the fine-tuned embedder's index when index.finetuned_embedder is on,
    rerank.candidates candidates when reranking); oracle mode `finetune.raft.retriever` over the
    base index with a few spare nodes for the oracle and duplicates."""
    from pipeline.retrieve import build_retriever

    raft = config.finetune.raft
    if raft.context == "loo":
        candidates = max(config.rerank.candidates, context_size(config)) if config.rerank.enabled else context_size(config)
        if kb is None and config.index.finetuned_embedder:
            kb = open_index(finetuned_embedder_config(config))
        return build_retriever(config, mode=config.retrieve.mode, top_k=candidates + 1, kb=kb)
    return build_retriever(config, mode=raft.retriever, top_k=raft.num_passages + 5, kb=kb)


def raft_reranker(config: Config) -> Any:
    """`full`'s reranker (the one rerank.kind names) for leave-one-out contexts (None in oracle
    mode or without reranking)."""
    if config.finetune.raft.context != "loo" or not config.rerank.enabled:
        return None
    from rerank import build_reranker

    return build_reranker(config, top_n=context_size(config))


def build_split(config: Config, split: str = "train", *, retriever: "BaseRetriever | None" = None, reranker: Any = "config", limit: Optional[int] = None, show_progress: bool = True) -> list[RaftExample]:
    """RAFT examples for one split of `data.dir`. Training triples only come from the knowledge
    splits; a held-out split (val) gets triples for validation loss, built the same way (its
    oracle is not in the knowledge base, which holds train only, so it never leaks back)."""
    knowledge = list(config.data.knowledge_splits)
    held_out = [s for s in SPLITS if s not in knowledge]
    records = load_split(config.data.dir, split)
    if limit is not None:
        records = records[:limit]
    # every held-out pair is forbidden, except the split's own pairs when it is held out (val):
    # those are its oracles, used for validation loss only
    forbidden = held_out_ids({s: load_split(config.data.dir, s) for s in held_out if s != split})
    raft = config.finetune.raft
    pool = [r for s in knowledge for r in load_split(config.data.dir, s)]
    return build_raft_examples(
        records,
        retriever or raft_retriever(config),
        num_passages=context_size(config),
        oracle_prob=raft.oracle_prob,
        cite_oracle=raft.cite,
        seed=config.finetune.seed + SPLITS.index(split),  # different draws per split, fixed per seed
        forbidden_ids=forbidden,
        allowed_splits=knowledge,
        fill_pool=pool,
        show_progress=show_progress,
        context=raft.context,
        reranker=raft_reranker(config) if reranker == "config" else reranker,
    )


def oracle_fraction(examples: Sequence[RaftExample]) -> float:
    return sum(e.oracle is not None for e in examples) / max(1, len(examples))


def write_examples(examples: Sequence[RaftExample], path: str | Path) -> Path:
    return write_jsonl(path, (e.to_json() for e in examples))


def _positive_int(text: str) -> int:
    # `--limit -1` would slice off the last question and `--limit 0` write an empty file
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.raft",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(
        parser,
        split="Split of data.dir whose questions get triples (default train; val is for validation loss; test is refused).",
        split_default="train",
        out="Output jsonl. Default: {finetune.raft.output}-triples/<split>.jsonl.",
    )
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="Only the first N questions of the split (N >= 1).")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        config = config_from_args(args)
        if args.split == "test":
            raise ConfigError("--split test: the test split is for evaluation only; RAFT triples are built from train (and val for validation loss)")
        examples = build_split(config, args.split, limit=args.limit)
        out = Path(args.out) if args.out else Path(f"{config.finetune.raft.output}-triples") / f"{args.split}.jsonl"
        write_examples(examples, out)
        save_resolved_config(config, out.parent, extra={"kind": "raft-triples", "split": args.split, "examples": len(examples), "oracle_fraction": round(oracle_fraction(examples), 4)})
        print(f"wrote {len(examples)} RAFT examples to {out} (oracle in {oracle_fraction(examples):.1%}, {config.finetune.raft.num_passages} passages each)")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
