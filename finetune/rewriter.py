"""Fine-tune the HyDE query rewriter with LoRA, and measure it by retrieval.

    python -m finetune.rewriter --config tiny                      # train, then report val retrieval
    python -m finetune.rewriter --config tiny --evaluate-only      # report with the existing adapter
    python -m finetune.rewriter --config tiny --data ../shared/data/seed-technical-qa/splits --split test --evaluate-only
    python -m finetune.rewriter --evaluate-only --adapter hyde-judged=runs/smollm2/adapters/rewriter-judged --report val.json

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
`hyde-lora` (the fine-tuned rewriter) vs `hyde-judged` (the rewriter trained on retrieval-judged
targets, `--adapter hyde-judged=DIR`, default the adapter folder followed by `-judged`), each
through the dense, hybrid and fine-tuned dense (`ft-dense`, what `full` searches) retrievers, with
the paired MRR@10 difference of each variant against `none`. The recommendation for `full` is the
variant whose gain on full's retriever has its 95% interval above 0 (the largest such gain), else
rewrite.mode none. `--question-weights 0.8,0.9,mean` also searches each hyde-* variant with the
question's vector weighted w against the hypotheticals' mean (rewrite.hyde_question_weight), from
one generation of its rewrites, as rows `VARIANT@w`. The report is printed and saved beside the adapter (`retrieval_report_SPLIT.json`)
or to `--report FILE`.

Targets judged by retrieval instead of the gold answers: `--set finetune.rewriter.targets=FILE`
with the JSONL of python -m finetune.judged_rewrites (the base LM's own sampled rewrites that rank
the gold passage at least as high as the question alone). Train questions without a judged rewrite
are left out; the val loss stays on the gold answers. Not done: weighting targets by their rank gain.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from finetune.common import train_lora_adapter
from finetune.judged_rewrites import judged_targets
from pipeline.cli import add_io_arguments, run_record
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, config_from_dict
from pipeline.data import SPLITS, DataError, load_split, open_book_corpus
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from pipeline.index import KnowledgeBase, finetuned_embedder_config
from pipeline.metrics import DEPTH, paired_mean_test, retrieval_per_query, summarize
from rewrite.prompts import hyde_training_example

VARIANTS = ("none", "hyde-base", "hyde-lora", "hyde-judged")


def rewriter_rows(config: Config, tokenizer: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, val) prompt/completion rows: question -> its own answer, under the HyDE prompt; with
    `finetune.rewriter.targets`, train questions -> their judged rewrites (finetune/judged_rewrites.py)."""
    rows = lambda records: [hyde_training_example(r["question"], r["answer"], tokenizer) for r in records]  # noqa: E731
    train = load_split(config.data.dir, "train")
    if config.finetune.rewriter.targets:
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
    retrievers: Sequence[str] = ("dense", "hybrid", "ft-dense"),
    adapters: Optional[Mapping[str, str]] = None,
    question_weights: Optional[Sequence[Optional[float]]] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Open-book retrieval of `split` with each rewrite variant and retriever; see the module doc.
    `adapters`: the LoRA adapter of each hyde-* variant but hyde-base (default: hyde-lora ->
    finetune.rewriter.output); a variant whose adapter is missing is skipped with a log line, as is
    a retriever whose model is (ft-: finetune.embedder.output, +rerank: rerank.model).
    `question_weights`: each hyde-* variant is searched once per weight w of the question's vector
    in the dense search vector (rewrite.hyde_question_weight; None: the plain mean), from one
    generation of its rewrites, and reported as `VARIANT@w` (default: the profile's weight only,
    reported under the variant's own name)."""
    from rerank.evaluate import evaluate_variants, parse_variant
    from rewrite.rewriter import rewrite_texts

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data_dir = data_dir or config.data.dir
    adapters = dict(adapters or {"hyde-lora": config.finetune.rewriter.output})
    weights = list(question_weights) if question_weights else [config.rewrite.hyde_question_weight]
    bad = [w for w in weights if w is not None and not 0.0 <= w <= 1.0]
    if bad:
        raise ValueError(f"evaluate_rewriters: question_weights {bad} must be between 0 and 1 (None: the plain HyDE mean)")
    unknown = [v for v in variants if v not in ("none", "hyde-base", *adapters)]
    if unknown:
        raise ValueError(f"evaluate_rewriters: variants {unknown} have no adapter; give them one in `adapters` (--adapter NAME=DIR)")
    retrievers = list(retrievers)
    if any(parse_variant(r).finetuned for r in retrievers) and not Path(config.finetune.embedder.output).exists():
        log(f"ft- retrievers skipped: no fine-tuned embedder at {config.finetune.embedder.output} (python -m finetune.embedder)")
        retrievers = [r for r in retrievers if not parse_variant(r).finetuned]
    if any(parse_variant(r).rerank for r in retrievers) and not Path(config.rerank.model).exists():
        log(f"+rerank retrievers skipped: no reranker at {config.rerank.model} (python -m finetune.reranker, or python -m finetune.ql_reranker for rerank.kind=query-likelihood)")
        retrievers = [r for r in retrievers if not parse_variant(r).rerank]
    nodes, questions, relevant = open_book_corpus(data_dir)
    queries, gold = questions[split], relevant[split]
    kb = KnowledgeBase.from_nodes(config, nodes, show_progress=show_progress)
    # the fine-tuned embedder's corpus once for every variant (not once per variant)
    ft_kb = None
    if any(parse_variant(r).finetuned for r in retrievers):
        ft_kb = KnowledgeBase.from_nodes(finetuned_embedder_config(config), nodes, show_progress=show_progress)
    result: dict[str, Any] = {"protocol": "open-book", "split": split, "data": str(data_dir), "corpus_size": len(nodes), "results": {}, "rewrites": {}, "adapters": {}, "seconds": {}}
    per_query: dict[str, dict[str, list[float]]] = {}
    try:
        for variant in variants:
            rewrites = None
            if variant != "none":
                adapter = adapters.get(variant)  # hyde-base: None, the base LM
                if adapter is not None and not Path(adapter).exists():
                    log(f"{variant} skipped: no rewriter adapter at {adapter} (python -m finetune.rewriter)")
                    continue
                started = time.perf_counter()
                rewrites = rewrite_texts(config, queries, adapter=adapter, mode="hyde", show_progress=show_progress)
                result["seconds"][variant] = round(time.perf_counter() - started, 1)
                result["adapters"][variant] = adapter
                result["rewrites"][variant] = [{"question": q, "hypothetical": h[0] if h else ""} for q, h in zip(queries[:5], rewrites[:5])]
            names = [f"rw-{r}" if rewrites is not None else r for r in retrievers]
            for weight in weights if rewrites is not None else [None]:
                # the question's weight only changes how the rewrites are searched with
                label = variant if rewrites is None or question_weights is None else f"{variant}@{'mean' if weight is None else f'{weight:g}'}"
                searched = config_from_dict(config.to_dict(), [f"rewrite.hyde_question_weight={json.dumps(weight)}"]) if rewrites is not None else config
                ranked = evaluate_variants(searched, nodes, queries, names, kb=kb, finetuned_kb=ft_kb, depth=DEPTH, rewrites=rewrites, show_progress=show_progress, log=log)
                for name, retriever in zip(names, retrievers):
                    key = f"{label}/{retriever}"
                    per_query[key] = retrieval_per_query(ranked[name], gold)
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
            result["paired_vs_none"][key] = paired_mean_test(a, b, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
    finally:
        kb.close()
        if ft_kb is not None:
            ft_kb.close()
    if question_weights is not None:
        result["question_weights"] = weights
    return result


def rewriters_markdown(result: dict[str, Any]) -> str:
    """The report as a table: one row per (variant, retriever), with MRR@10's paired difference
    against the question alone on the same retriever."""
    n = next(iter(result["results"].values()))["n"] if result["results"] else 0
    lines = [
        f"### HyDE rewriters, open-book, split {result['split']} ({result['corpus_size']} passages, n={n})",
        "",
        "| rewrite | retriever | R@1 | R@5 | MRR@10 [95% CI] | Delta MRR@10 vs none [95% CI] | rewrite seconds |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    for key, row in result["results"].items():
        variant, retriever = key.split("/", 1)
        test = result.get("paired_vs_none", {}).get(key)
        delta = f"{test['diff']:+.3f} [{test['ci95_low']:+.3f}, {test['ci95_high']:+.3f}]" if test else "–"
        lo, hi = row["ci95"]["mrr@10"]
        lines.append(f"| {variant} | {retriever} | {row['recall@1']:.3f} | {row['recall@5']:.3f} | {row['mrr@10']:.3f} [{lo:.3f}, {hi:.3f}] | {delta} | {result.get('seconds', {}).get(variant.split('@')[0], '–')} |")
    if "recommended" in result:
        r = result["recommended"]
        lines += ["", f"Recommended for full (searching {r['retriever']}): rewrite.mode={r['rewrite.mode']}" + (f" with {r['variant']}" if r["variant"] else "") + (f", rewrite.hyde_question_weight={r['rewrite.hyde_question_weight']}" if "rewrite.hyde_question_weight" in r else "") + "."]
    return "\n".join(lines)


def full_retriever(config: Config) -> str:
    """The retriever name (evaluate_rewriters' keys) of what `full` searches with under `config`."""
    return ("ft-" if config.index.finetuned_embedder else "") + config.retrieve.mode


def recommend_mode(result: dict[str, Any], retriever: str = "hybrid") -> tuple[str, Optional[str]]:
    """(rewrite.mode, the winning variant) for `full`: the hyde-* variant with the largest MRR@10
    gain over the question alone on `retriever` among those whose 95% interval lies above 0, as a
    part `full` keeps must earn; ("none", None) when none does."""
    earned = [(test["diff"], key.split("/", 1)[0]) for key, test in result.get("paired_vs_none", {}).items() if key.endswith(f"/{retriever}") and test["ci95_low"] > 0]
    if not earned:
        return "none", None
    return "hyde", max(earned)[1]


def parse_question_weights(text: Optional[str]) -> Optional[list[Optional[float]]]:
    """--question-weights "0.5,0.9,mean" -> [0.5, 0.9, None]; None when not given."""
    if not text:
        return None
    weights: list[Optional[float]] = []
    for item in (t.strip() for t in text.split(",")):
        if item == "mean":
            weights.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--question-weights: {item!r} is not a weight between 0 and 1 (or mean); write e.g. --question-weights 0.5,0.9,0.95")
        weights.append(value)
    return weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.rewriter",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(
        parser,
        data="Prepared splits for the retrieval report (open-book corpus). Default: data.dir.",
        split="Split whose questions the retrieval report uses (tune on val; report test once). Default: val.",
        split_default="val",
        out="Adapter folder. Default: finetune.rewriter.output (what rewrite.adapter loads).",
        out_metavar="DIR",
    )
    parser.add_argument("--no-resume", action="store_true", help="Ignore checkpoints of an interrupted run with the same settings and start over.")
    parser.add_argument("--evaluate-only", action="store_true", help="Skip training; evaluate the adapter already at --out.")
    parser.add_argument("--no-evaluate", action="store_true", help="Train only; skip the retrieval report.")
    parser.add_argument("--variants", default=",".join(VARIANTS), metavar="LIST", help=f"Rewrite variants of the report: none (the question alone), hyde-base (the base LM writes the hypothetical answer), and hyde-NAME for each adapter of --adapter. Default: {','.join(VARIANTS)} (a variant without an adapter on disk is skipped).")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="The adapter of a rewrite variant, e.g. hyde-judged=runs/smollm2/adapters/rewriter-judged (repeatable). Default: hyde-lora=--out, hyde-judged=--out followed by -judged.")
    parser.add_argument("--retrievers", default="dense,hybrid,ft-dense", metavar="LIST", help="Retrievers of the report, [ft-](dense|bm25|hybrid)[+rerank] as in eval.retrieval; ft- needs finetune.embedder.output, +rerank rerank.model (skipped when missing). Default: dense,hybrid,ft-dense.")
    parser.add_argument("--question-weights", metavar="LIST", help="Also search each hyde-* variant with these weights of the question's vector in the dense search vector (rewrite.hyde_question_weight), e.g. 0.5,0.8,0.9,0.95, mean for the plain mean; the rewrites are written once. Rows are named VARIANT@W. Default: the profile's weight only.")
    parser.add_argument("--report", metavar="FILE", help="Write the report's JSON here. Default: retrieval_report_SPLIT.json in the adapter folder.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [f"finetune.rewriter.output={json.dumps(args.out)}"] if args.out else []

    started = time.perf_counter()

    def body() -> None:
        config = config_from_args(args, overrides)
        if not args.evaluate_only:
            train_rewriter(config, resume=not args.no_resume)
        if not args.no_evaluate:
            out = config.finetune.rewriter.output
            adapters = {"hyde-lora": out, "hyde-judged": f"{out}-judged"}
            for item in args.adapter:
                name, sep, folder = item.partition("=")
                if not sep or not name.startswith("hyde-") or name == "hyde-base" or not folder:
                    raise ConfigError(f"--adapter {item!r}: write NAME=DIR with NAME hyde-SOMETHING other than hyde-base, e.g. hyde-judged=runs/smollm2/adapters/rewriter-judged")
                adapters[name] = folder
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            retrievers = [r.strip() for r in args.retrievers.split(",") if r.strip()]
            result = evaluate_rewriters(config, data_dir=args.data, split=args.split, variants=variants, retrievers=retrievers, adapters={v: adapters[v] for v in variants if v in adapters}, question_weights=parse_question_weights(args.question_weights))
            retriever = full_retriever(config)
            mode, variant = recommend_mode(result, retriever)
            name, _, weight = (variant or "").partition("@")
            result["recommended"] = {"rewrite.mode": mode, "variant": variant, "adapter": adapters.get(name) if variant else None, "retriever": retriever}
            if weight:
                result["recommended"]["rewrite.hyde_question_weight"] = None if weight == "mean" else float(weight)
            print(f"recommended for full (searching {retriever}): rewrite.mode={mode}" + (f" with {variant} ({result['recommended']['adapter'] or 'the base LM'})" if variant else "") + " (hyde when a rewrite variant's MRR@10 gain over the question alone has its 95% interval above 0)")
            result["run"] = run_record("finetune.rewriter", argv, started)
            print(rewriters_markdown(result))
            if args.report:
                write_json(args.report, result)
            elif Path(out).is_dir():
                write_json(Path(out) / f"retrieval_report_{args.split}.json", result)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
