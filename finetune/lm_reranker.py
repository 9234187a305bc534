"""Fine-tune the generator's base LM with LoRA as a pointwise reranker (rerank/lm_pointwise.py).

    python -m pipeline.index     --config smollm2                      # the knowledge base the negatives are mined from
    python -m finetune.lm_reranker --config smollm2 --set finetune.lm_reranker.limit=300
    python -m rerank.evaluate --split val --first-stage ft-dense --reranker lm=runs/smollm2/adapters/lm-reranker

Training rows: each train question with its own answer -> "yes", and with
`finetune.lm_reranker.hard_negatives` passages the hybrid retriever ranks highest that are not its
answer, plus `random_negatives` other answers -> "no" (mined as finetune.reranker mines them:
the same functions). Val rows (the loss per epoch): each val question's own answer -> "yes" and
one random other answer -> "no". The training loop is the one of every adapter
(finetune/common.py: TRL SFTTrainer, completion-only loss, resumable, atomic save). The score at
inference is logit(yes) - logit(no) at the first answer token.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from finetune.common import adapter_cli, train_lora_adapter
from pipeline.config import Config
from pipeline.data import load_split
from rerank.lm_pointwise import pointwise_example


def lm_reranker_rows(config: Config, tokenizer: Any, *, show_progress: bool = True) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, val) prompt/completion rows; see the module doc."""
    from finetune.reranker import build_examples, mine_hard_negatives, open_knowledge_base, query_vectors, random_negatives
    from pipeline.retrieve import build_retriever

    settings = config.finetune.lm_reranker
    chars = config.generator.max_passage_chars
    train = load_split(config.data.dir, "train")[: settings.limit]
    val = load_split(config.data.dir, "val")[: settings.eval_limit]
    hard: list[list[str]] = [[] for _ in train]
    if settings.hard_negatives > 0:
        kb = open_knowledge_base(config)
        try:
            retriever = build_retriever(config, mode="hybrid", top_k=max(settings.mine_candidates, settings.hard_negatives + 2), kb=kb)
            hard = mine_hard_negatives(retriever, train, settings.hard_negatives, show_progress=show_progress, embeddings=query_vectors(kb, [r["question"] for r in train]))
        finally:
            kb.close()
    rows = []
    for example in build_examples(train, hard, settings.random_negatives, config.finetune.seed):
        rows.append(pointwise_example(example.query, example.positive, True, tokenizer, max_passage_chars=chars))
        rows += [pointwise_example(example.query, negative, False, tokenizer, max_passage_chars=chars) for negative in example.negatives]
    rng = random.Random(config.finetune.seed)
    val_rows = []
    for i, record in enumerate(val):
        val_rows.append(pointwise_example(record["question"], record["answer"], True, tokenizer, max_passage_chars=chars))
        val_rows += [pointwise_example(record["question"], other, False, tokenizer, max_passage_chars=chars) for other in random_negatives(val, i, 1, rng)]
    return rows, val_rows


def train_lm_reranker(config: Config, *, output: str | None = None, resume: bool = True, log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Train the pointwise adapter; returns the train report."""
    return train_lora_adapter(
        config,
        config.finetune.lm_reranker,
        section="finetune.lm_reranker",
        kind="lm-reranker-adapter",
        build_rows=lambda tokenizer: lm_reranker_rows(config, tokenizer, show_progress=show_progress),
        output=output or config.finetune.lm_reranker.output,
        resume=resume,
        log=log,
        show_progress=show_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return adapter_cli(argv, prog="python -m finetune.lm_reranker", doc=__doc__, section="finetune.lm_reranker", train=train_lm_reranker)


if __name__ == "__main__":
    raise SystemExit(main())
