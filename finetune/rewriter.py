"""Fine-tune the HyDE query rewriter with LoRA, and measure it by retrieval.

    python -m finetune.rewriter --config tiny                      # train, then report val retrieval
    python -m finetune.rewriter --config tiny --evaluate-only      # report with the existing adapter
    python -m finetune.rewriter --config tiny --data ../shared/data/seed-technical-qa/splits --split test --evaluate-only

Training (fine-tuning FOR retrieval): LoRA SFT of the base LM (`generator.model`) on the train
questions -> the answer part of the question's own knowledge-base passage, with the HyDE prompt
of rewrite/prompts.py (the one the rewriter uses at inference). The rewriter then writes, for a
new question, a passage in the knowledge base's own format that the retrievers search with.
Hyperparameters: `finetune.rewriter`; the adapter goes to `finetune.rewriter.output`, which is
what `rewrite.adapter` loads by default. The training loop is the one shared with the generator
(finetune/common.py: TRL SFTTrainer, completion-only loss, val loss per epoch, resumable,
atomic save with loss history, loss curve and resolved config).

Evaluation (open-book protocol of eval.retrieval: every answer of train+val+test is a passage,
the gold passage of a question is its own answer): recall@k, MRR@10, nDCG@10 with 95% intervals
for `none` (the question alone) vs `hyde-base` (the base LM writes the hypothetical answer) vs
`hyde-lora` (the fine-tuned rewriter), each through the dense and hybrid retrievers, plus
hybrid+rerank when the reranker is built. The report is printed and saved beside the adapter
(`retrieval_report.json`).

Targets judged by retrieval instead of the gold answers: `--set finetune.rewriter.targets=FILE`
with the JSONL of python -m finetune.judged_rewrites (the base LM's own sampled rewrites that rank
the gold passage at least as high as the question alone). Train questions without a judged rewrite
are left out; the val loss stays on the gold answers. Not done: weighting targets by their rank gain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from finetune.common import train_lora_adapter
from pipeline.config import Config, add_config_arguments, config_from_args
from pipeline.data import SPLITS, DataError, load_split
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from rewrite.prompts import hyde_training_example

VARIANTS = ("none", "hyde-base", "hyde-lora")


def rewriter_rows(config: Config, tokenizer: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, val) prompt/completion rows: question -> its own answer, under the HyDE prompt; with
    `finetune.rewriter.targets`, train questions -> their judged rewrites (finetune/judged_rewrites.py)."""
    rows = lambda records: [hyde_training_example(r["question"], r["answer"], tokenizer) for r in records]  # noqa: E731
    train = load_split(config.data.dir, "train")
    if config.finetune.rewriter.targets:
        from finetune.judged_rewrites import judged_targets

        train = judged_targets(config.finetune.rewriter.targets, train)
    return rows(train), rows(load_split(config.data.dir, "val"))


def train_rewriter(config: Config, *, output: str | Path | None = None, resume: bool = True, log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Any]:
    """Train the rewriter adapter; returns the train report."""
    return train_lora_adapter(
        config,
        config.finetune.rewriter,
        section="finetune.rewriter",
        kind="rewriter-adapter",
        build_rows=lambda tokenizer: rewriter_rows(config, tokenizer),
        output=output or config.finetune.rewriter.output,
        resume=resume,
        log=log,
        show_progress=show_progress,
    )


def evaluate_rewriters(
    config: Config,
    *,
    data_dir: str | Path | None = None,
    split: str = "val",
    variants: Sequence[str] = VARIANTS,
    retrievers: Sequence[str] = ("dense", "hybrid", "hybrid+rerank"),
    adapter: Optional[str] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Open-book retrieval of `split` with each rewrite variant and retriever; see the module doc."""
    from llama_index.core.schema import QueryBundle

    from eval.metrics import paired_bootstrap_test, retrieval_per_query, summarize
    from eval.retrieval import DEPTH, open_book_corpus
    from pipeline.index import KnowledgeBase
    from pipeline.models import load_llm
    from pipeline.retrieve import build_retriever
    from rewrite import QueryRewriter

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data_dir = data_dir or config.data.dir
    adapter = adapter or config.finetune.rewriter.output
    nodes, questions, relevant = open_book_corpus(data_dir)
    queries, gold = questions[split], relevant[split]
    kb = KnowledgeBase.from_nodes(config, nodes, show_progress=show_progress)
    reranker = None
    if "hybrid+rerank" in retrievers:
        if Path(config.rerank.model).exists():
            from rerank import CrossEncoderReranker

            reranker = CrossEncoderReranker.from_config(config, top_n=DEPTH)
        else:
            log(f"hybrid+rerank skipped: no reranker at {config.rerank.model} (python -m finetune.reranker)")
            retrievers = [r for r in retrievers if r != "hybrid+rerank"]
    # the open-book corpus holds answers alone, so the hypothetical passage is the answer alone
    answers_only = lambda question, answer: answer  # noqa: E731
    result: dict[str, Any] = {"protocol": "open-book", "split": split, "data": str(data_dir), "corpus_size": len(nodes), "results": {}, "rewrites": {}}
    per_query: dict[str, dict[str, list[float]]] = {}
    try:
        for variant in variants:
            if variant == "none":
                hypotheticals: list[list[str]] = [[] for _ in queries]
            else:
                use_adapter = variant == "hyde-lora"
                if use_adapter and not Path(adapter).exists():
                    log(f"{variant} skipped: no rewriter adapter at {adapter} (python -m finetune.rewriter)")
                    continue
                llm = load_llm(config, adapter=adapter if use_adapter else None, verbose=show_progress)
                rewriter = QueryRewriter(llm, mode="hyde", max_new_tokens=config.rewrite.max_new_tokens, passage_format=answers_only)
                made = rewriter.rewrite_many(queries, show_progress=show_progress)
                hypotheticals = [list(m.texts) for m in made]
                result["rewrites"][variant] = [{"question": q, "hypothetical": h[0] if h else ""} for q, h in zip(queries[:5], hypotheticals[:5])]
            for name in retrievers:
                base = "hybrid" if name == "hybrid+rerank" else name
                candidates = config.rerank.candidates if name == "hybrid+rerank" else DEPTH
                retriever = build_retriever(config, base, max(candidates, DEPTH), kb=kb)
                ranked = []
                for question, texts in zip(queries, hypotheticals):
                    bundle = QueryBundle(query_str=question, custom_embedding_strs=[question, *texts] if texts else None)
                    hits = retriever.retrieve(bundle)
                    if name == "hybrid+rerank":
                        hits = reranker.postprocess_nodes(hits, query_str=question)
                    ranked.append([h.node.node_id for h in hits[:DEPTH]])
                key = f"{variant}/{name}"
                per_query[key] = retrieval_per_query(ranked, gold)
                result["results"][key] = summarize(per_query[key], samples=config.eval.bootstrap_samples, seed=config.eval.seed)
                row = result["results"][key]
                log(f"{key:<28} R@1 {row['recall@1']:.3f}  R@5 {row['recall@5']:.3f}  MRR@10 {row['mrr@10']:.3f} [{row['ci95']['mrr@10'][0]:.3f}, {row['ci95']['mrr@10'][1]:.3f}]")
        result["paired_vs_none"] = {}
        for key, values in per_query.items():
            variant, name = key.split("/", 1)
            base_key = f"none/{name}"
            if variant == "none" or base_key not in per_query:
                continue
            a, b = values["mrr@10"], per_query[base_key]["mrr@10"]
            result["paired_vs_none"][key] = paired_bootstrap_test(
                len(a), lambda idx, a=a: sum(a[i] for i in idx) / len(idx), lambda idx, b=b: sum(b[i] for i in idx) / len(idx), samples=config.eval.bootstrap_samples, seed=config.eval.seed
            )
    finally:
        kb.close()
    return result


def recommend_mode(result: dict[str, Any], retriever: str = "hybrid") -> str:
    """`hyde` unless the LoRA rewriter makes retrieval worse than `none` beyond the interval."""
    test = result.get("paired_vs_none", {}).get(f"hyde-lora/{retriever}")
    if test is None:
        return "none"
    return "none" if test["ci95_high"] < 0 else "hyde"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.rewriter",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", metavar="DIR", help="Adapter folder. Default: finetune.rewriter.output (what rewrite.adapter loads).")
    parser.add_argument("--no-resume", action="store_true", help="Ignore checkpoints of an interrupted run with the same settings and start over.")
    parser.add_argument("--evaluate-only", action="store_true", help="Skip training; evaluate the adapter already at --out.")
    parser.add_argument("--no-evaluate", action="store_true", help="Train only; skip the retrieval report.")
    parser.add_argument("--data", metavar="DIR", help="Prepared splits for the retrieval report (open-book corpus). Default: data.dir.")
    parser.add_argument("--split", default="val", choices=SPLITS, help="Split whose questions the retrieval report uses (tune on val; report test once). Default: val.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [f"finetune.rewriter.output={json.dumps(args.out)}"] if args.out else []

    def body() -> None:
        config = config_from_args(args, overrides)
        if not args.evaluate_only:
            train_rewriter(config, resume=not args.no_resume)
        if not args.no_evaluate:
            result = evaluate_rewriters(config, data_dir=args.data, split=args.split)
            result["recommended_rewrite_mode"] = recommend_mode(result)
            print(f"recommended rewrite.mode for the full system: {result['recommended_rewrite_mode']} (hyde unless the LoRA rewriter is worse than none on hybrid beyond the 95% interval)")
            out = Path(config.finetune.rewriter.output)
            if out.is_dir():
                write_json(out / f"retrieval_report_{args.split}.json", result)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
