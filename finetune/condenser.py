"""Train the condenser: (conversation, message) -> the standalone search question(s), chosen by retrieval.

    python -m finetune.condenser                                   # judge the targets, train, write rewrite.condense_adapter
    python -m finetune.condenser --judge-only --out-cases cases.jsonl   # the judged training cases only, no training
    python -m finetune.condenser --data ../shared/data/seed-technical-qa/splits

What it learns (rewrite/condense.py runs it, behind the no-model gate): a follow-up whose last turn
leans on the conversation -> the question it means; a message wrapped in greetings, background and
red herrings -> the one thing it asks; a message that asks two things -> two questions, one per
line; a message that already stands alone -> itself. The prompt is the inference prompt
(rewrite.prompts.condense_messages), so the adapter replaces the LM and nothing else.

The training cases come from the train split only: the generated cases of rewrite/cases.py
(`build_cases(data_dir, "train")`: same-topic question pairs turned into pronoun follow-ups, topic
shifts, verbose wrappers with typos, compound joins; `finetune.condenser.per_family` of each) and
clean train questions copied as they are (first those the gate would send to the LM: a clean
question joined by "and" must come back unchanged). A follow-up's earlier turn gets, for
`ANSWER_SHARE` of them, an assistant answer (the train answer of the question closest to it in
words, cut as the prompt cuts answers), since users' conversations hold the answers too.

Targets chosen by what retrieval finds (as finetune.judged_rewrites chooses HyDE targets): each
case's candidate outputs (`candidates`: its clean target question(s), one per line; the message as
typed; for a follow-up, its user turns joined) are searched over the train answers (one passage
each, embedded with `index.embed_model`, in memory: no val or test passage is ever read), a
candidate with several lines by each line on its own and the lists merged round-robin as the
engine merges them; its score is the mean over the case's gold passages of 1 / rank (0 past rank
10). `select_target` (pure) keeps the best-scoring candidate, ties going to the earlier one (the
clean question(s) first), and drops the case when no candidate finds a gold passage in the top 10.
`VAL_SHARE` (5%) of the kept cases, chosen by hash, are held out for the val loss.

Hyperparameters: `finetune.condenser` (the shared LoRA settings); the training loop is the one
every adapter uses (finetune/common.py: resumable, atomic save with loss history and config).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from finetune.common import train_lora_adapter
from pipeline.cli import add_io_arguments, run_record
from pipeline.config import Config, add_config_arguments, config_from_args
from pipeline.data import load_split
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from rewrite.cases import HAND_FAMILIES, Case, build_cases, words
from rewrite.condense import needs_condensing
from rewrite.prompts import CONDENSE_ANSWER_CHARS, condense_training_example

DEPTH = 10  # a candidate that finds no gold passage in the top 10 earns nothing
ANSWER_SHARE = 0.6  # of the generated follow-ups whose earlier turn gets an assistant answer
VAL_SHARE = 0.05  # of the kept cases, held out for the val loss


# --------------------------------------------------------------------------------------------
# the cases and their candidates
# --------------------------------------------------------------------------------------------


def _closest_answer(text: str, records: Sequence[Mapping[str, str]], index: Sequence[set[str]]) -> Optional[str]:
    """The answer of the train question sharing most words with `text` (Jaccard), or None."""
    mine = set(words(text))
    if not mine:
        return None
    best, best_score = None, 0.0
    for record, theirs in zip(records, index):
        score = len(mine & theirs) / len(mine | theirs) if theirs else 0.0
        if score > best_score:
            best, best_score = record["answer"], score
    return best if best_score >= 0.3 else None


def cases_per_family(settings: Any, train_questions: int) -> int:
    """finetune.condenser.per_family, capped at per_question x the train questions (at least 1)."""
    if settings.per_question is None:
        return settings.per_family
    return max(1, min(settings.per_family, math.ceil(settings.per_question * train_questions)))


def training_cases(config: Config, *, per_family: Optional[int] = None) -> list[Case]:
    """Generated train cases of each family and copied clean questions (see the module docstring)."""
    data_dir = config.data.dir
    records = load_split(data_dir, "train")
    per_family = per_family or cases_per_family(config.finetune.condenser, len(records))
    built = build_cases(data_dir, "train", hand_dir=None, seed=config.finetune.seed, per_family=per_family)
    generated = [c for c in built if c.family in HAND_FAMILIES]
    rng = random.Random(f"ragft-condenser-{config.finetune.seed}")
    index = [set(words(r["question"])) for r in records]
    with_answers = []
    for case in generated:
        if case.family == "follow-up" and case.history and rng.random() < ANSWER_SHARE:
            answer = _closest_answer(case.history[-1]["content"], records, index)
            if answer:
                cut = " ".join(answer.split())[:CONDENSE_ANSWER_CHARS]
                case = Case(case.id, case.family, case.split, case.source, case.message, case.targets, (*case.history, {"role": "assistant", "content": cut}), case.kind)
        with_answers.append(case)
    counts = [sum(c.family == f for c in generated) for f in HAND_FAMILIES]
    n_clean = min([n for n in counts if n] or [0])
    clean = [c for c in built if c.family == "clean"]
    rng.shuffle(clean)
    # first the clean questions the gate sends to the LM (they must come back unchanged), then any
    gated = [c for c in clean if needs_condensing(c.message, [])[0]]
    rest = [c for c in clean if not needs_condensing(c.message, [])[0]]
    return with_answers + (gated + rest)[:n_clean]


def candidates(case: Case) -> dict[str, list[str]]:
    """The outputs a case could be trained to write, in order of preference on a tie: its clean
    target question(s), one per line; the message as typed; a follow-up's user turns joined."""
    out = {"target": list(case.targets), "typed": [case.message]}
    if case.family == "follow-up":
        out["concat"] = [" ".join([t["content"] for t in case.history if t["role"] == "user"] + [case.message])]
    return out


# --------------------------------------------------------------------------------------------
# the choice (pure)
# --------------------------------------------------------------------------------------------


def merged_score(rankings: Sequence[Sequence[str]], gold: Sequence[str], depth: int = DEPTH) -> float:
    """Mean over the gold ids of 1 / rank in the round-robin merge of the rankings (0 past `depth`)."""
    merged: list[str] = []
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank] not in merged:
                merged.append(ranking[rank])
    top = merged[:depth]
    return sum(1.0 / (top.index(g) + 1) if g in top else 0.0 for g in gold) / len(gold)


def select_target(scores: Mapping[str, float]) -> Optional[str]:
    """The best-scoring candidate (ties: the earliest in `scores`' order), None when none scores > 0."""
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return None
    return next(name for name, score in scores.items() if score == best)


@dataclass(frozen=True)
class JudgedCase:
    case: Case
    chosen: str  # the candidate's name
    target: str  # what the condenser is trained to write (lines)
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**self.case.to_dict(), "chosen": self.chosen, "target": self.target, "scores": {k: round(v, 4) for k, v in self.scores.items()}}


def judge_cases(config: Config, cases: Sequence[Case], *, show_progress: bool = True, log: Callable[[str], None] = print) -> tuple[list[JudgedCase], dict[str, Any]]:
    """Search every candidate over the train answers with index.embed_model; keep each case's best."""
    import numpy as np

    from pipeline.encoders import load_embedder

    records = load_split(config.data.dir, "train")
    answers = list(dict.fromkeys(r["answer"] for r in records))
    answer_id = {a: str(i) for i, a in enumerate(answers)}
    gold_of = {r["question"]: answer_id[r["answer"]] for r in records}
    embedder = load_embedder(config)
    started = time.perf_counter()
    corpus = np.asarray(embedder.get_text_embedding_batch(answers, show_progress=show_progress), dtype=np.float32)
    texts = list(dict.fromkeys(t for c in cases for ts in candidates(c).values() for t in ts))
    queries = np.asarray(embedder.get_text_embedding_batch(texts, show_progress=show_progress), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True) + 1e-12
    queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12
    top = np.argsort(-(queries @ corpus.T), axis=1)[:, :DEPTH]
    ranked = {t: [str(i) for i in row] for t, row in zip(texts, top)}
    judged, dropped = [], 0
    chosen_counts: dict[str, int] = {}
    for case in cases:
        gold = [gold_of[t] for t in case.targets]
        scores = {name: merged_score([ranked[t] for t in ts], gold) for name, ts in candidates(case).items()}
        name = select_target(scores)
        if name is None:
            dropped += 1
            continue
        chosen_counts[name] = chosen_counts.get(name, 0) + 1
        judged.append(JudgedCase(case, name, "\n".join(candidates(case)[name]), scores))
    report = {
        "cases": len(cases),
        "kept": len(judged),
        "dropped_no_gold_found": dropped,
        "chosen": chosen_counts,
        "by_family": {f: sum(j.case.family == f for j in judged) for f in ("clean", *HAND_FAMILIES)},
        "corpus": f"{len(answers)} distinct train answers, {config.index.embed_model}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(f"condenser targets: kept {len(judged)} of {len(cases)} cases ({dropped} with no gold passage in any candidate's top {DEPTH}); chosen: {chosen_counts}")
    return judged, report


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _held_out(case: Case, share: float = VAL_SHARE) -> bool:
    digest = hashlib.sha256(f"{case.message}\n{case.targets}".encode()).digest()
    return digest[0] / 256 < share


def condenser_rows(judged: Sequence[JudgedCase], tokenizer: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, val) prompt/completion rows under the inference prompt; val: the hash-held-out share."""
    from llama_index.core.base.llms.types import ChatMessage

    train, val = [], []
    for item in judged:
        history = [ChatMessage(role=t["role"], content=t["content"]) for t in item.case.history]
        row = condense_training_example(history, item.case.message, item.target, tokenizer)
        (val if _held_out(item.case) else train).append(row)
    return train, val


def train_condenser(config: Config, *, output: str | Path | None = None, resume: bool = True, log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Judge the train cases' targets, then train the condenser adapter; returns the train report."""
    judged, report = judge_cases(config, training_cases(config), show_progress=show_progress, log=log)
    output = Path(output or config.finetune.condenser.output)

    def save_extra(folder: Path) -> None:
        with open(folder / "training_cases.jsonl", "w", encoding="utf-8") as handle:
            for item in judged:
                handle.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
        write_json(folder / "targets_report.json", report)

    return train_lora_adapter(
        config,
        config.finetune.condenser,
        section="finetune.condenser",
        kind="condenser-adapter",
        build_rows=lambda tokenizer: condenser_rows(judged, tokenizer),
        output=output,
        resume=resume,
        log=log,
        show_progress=show_progress,
        save_extra=save_extra,
        report_extra=lambda: {"targets": report},
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.condenser",
        description="Train the condenser (LoRA on the generator's base LM): conversation + message -> standalone search question(s), on train-split cases whose targets retrieval chose.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[0],
    )
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder (train.jsonl is read; val and test never are). Default: data.dir of the profile; other data trains into the run folder eval.compare uses for it.",
        out="Adapter folder. Default: finetune.condenser.output (what rewrite.condense_adapter loads).",
        out_metavar="DIR",
    )
    parser.add_argument("--judge-only", action="store_true", help="Judge the training cases' targets and write them (--out-cases), without training.")
    parser.add_argument("--out-cases", metavar="FILE", help="With --judge-only: the JSONL of judged cases (default: condenser_cases.jsonl in the current folder).")
    parser.add_argument("--no-resume", action="store_true", help="Start training from scratch even when checkpoints of the same settings exist.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.cli import config_for_data

        config = config_for_data(args)
        if args.judge_only:
            judged, report = judge_cases(config, training_cases(config), show_progress=not args.no_progress)
            path = Path(args.out_cases or "condenser_cases.jsonl")
            with open(path, "w", encoding="utf-8") as handle:
                for item in judged:
                    handle.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            report["run"] = run_record("finetune.condenser", argv, started)
            print(json.dumps(report, indent=2))
            return
        report = train_condenser(config, output=args.out, resume=not args.no_resume, show_progress=not args.no_progress)
        print(json.dumps({k: v for k, v in report.items() if k != "loss_history"}, indent=2, default=str))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
