"""Retrieval evaluation: recall@1/5/10/20, MRR@10, nDCG@10, hit rate with bootstrap 95% intervals.

    python -m eval.retrieval --data ../shared/data/seed-technical-qa/splits --protocol open-book --split test
    python -m eval.retrieval --data data/demo --protocol closed-book --split test --retrievers dense,bm25 --format json
    python -m eval.retrieval --data ../shared/data/seed-technical-qa/splits --protocol open-book --split test --tune
    python -m eval.retrieval --data ../shared/data/seed-technical-qa/splits --protocol open-book --split val \
        --retrievers full,full-no-rewrite,full-base-embedder,full-dense,full-no-rerank --format json
    python -m eval.retrieval --data ../shared/data/seed-technical-qa/splits --queries realistic --split val

Protocols:
  open-book    the corpus is every answer of train+val+test, one passage each; the queries are the
               chosen split's questions; the relevant passage is the question's own answer.
  closed-book  the knowledge base is the train pairs ("Question: ...\\nAnswer: ..." nodes, as
               pipeline.index builds them); there is no gold passage, so it reports the ROUGE-L F1 of
               the top-1 retrieved answer against the reference answer (the reference experiment's
               retrieval-only baseline), the mean MiniLM cosine of that answer with the reference,
               and the answer-similarity hit rate: the share of questions with a retrieved answer
               (top 1 / top 5) whose cosine with the reference is >= --sim-threshold.

Both build an in-memory knowledge base (an ephemeral Chroma collection + bm25s) and query it through
the same retriever classes as the system (pipeline.retrieve): nothing here re-implements search.

--tune chooses the hybrid's fusion (mode, k, weights) on the VAL split only, by MRR@10 (ties:
recall@5, then the fewest changes from plain RRF: k=60, equal weights), from cached candidate lists through the same
`fuse` function the HybridRetriever uses; the chosen setting is then run once on --split through a
HybridRetriever and reported as `hybrid-tuned`, with a paired bootstrap test against dense, and
printed as a YAML `retrieve:` block to put into a profile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from eval.metrics import rouge_l_f1
from eval.realistic.benchmark import CASES_HELP
from pipeline.cli import add_io_arguments
from pipeline.config import RESOLVED_CONFIG_NAME, Config, ConfigError, add_config_arguments, save_resolved_config
from pipeline.data import load_split, open_book_corpus
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from pipeline.metrics import DEFAULT_KS, DEPTH, paired_mean_test, retrieval_per_query, summarize

PROTOCOLS = ("open-book", "closed-book")
RETRIEVERS = ("dense", "bm25", "hybrid")
METRIC_ORDER = [*(f"recall@{k}" for k in DEFAULT_KS), "mrr@10", "ndcg@10", "hit_rate"]
CLOSED_ORDER = ["rougeL_top1", "answer_cosine_top1", "answer_hit@1", "answer_hit@5"]

# The search space of --tune: every combination is scored on val from cached lists (cheap).
TUNE_GRID = {
    "fusion": ["rrf", "score"],
    "rrf_k": [1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 100.0],
    "bm25_weight": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
}


# --------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------




# --------------------------------------------------------------------------------------------
# running retrievers
# --------------------------------------------------------------------------------------------


def _progress(iterable, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="q", disable=not show, leave=False)


def run_retriever(retriever, questions: Sequence[str], *, embeddings: Sequence[Sequence[float]] | None = None, desc: str = "retrieving", show_progress: bool = True) -> tuple[list[list[Any]], list[float]]:
    """Hits of every question (best first) and the seconds each query took. `embeddings`
    (precomputed query vectors, batched) ride in the QueryBundle; BM25 ignores them."""
    from llama_index.core.schema import QueryBundle

    hits, seconds = [], []
    for i, question in enumerate(_progress(questions, desc, show_progress)):
        bundle = QueryBundle(query_str=question, embedding=list(embeddings[i]) if embeddings is not None else None)
        started = time.perf_counter()
        hits.append(retriever.retrieve(bundle))
        seconds.append(time.perf_counter() - started)
    return hits, seconds


def query_embeddings(kb, config: Config, questions: Sequence[str]) -> list[list[float]]:
    from pipeline.retrieve import DenseRetriever

    return DenseRetriever(kb, top_k=1, max_query_chars=config.retrieve.max_query_chars).embed_queries(questions)


def _ids(hits_per_query: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [[h.node.node_id for h in hits] for hits in hits_per_query]


def _retrieval_summary(ranked: list[list[str]], relevant: list[set[str]], config: Config) -> tuple[dict[str, Any], dict[str, list[float]]]:
    per_query = retrieval_per_query(ranked, relevant)
    return summarize(per_query, samples=config.eval.bootstrap_samples, seed=config.eval.seed), per_query


def tune_fusion(
    dense_hits: Sequence[Sequence[Any]],
    bm25_hits: Sequence[Sequence[Any]],
    relevant: Sequence[set[str]],
    *,
    grid: dict[str, list[Any]] | None = None,
    log: Callable[[str], None] = lambda *_: None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Best fusion setting by MRR@10 (then recall@5) over `grid` on cached candidate lists (dense
    weight fixed at 1: only the ratio matters). Returns the best and every scored setting."""
    from pipeline.retrieve import fused_ids

    grid = grid or TUNE_GRID
    rows = []
    for fusion, rrf_k, bm25_weight in itertools.product(grid["fusion"], grid["rrf_k"], grid["bm25_weight"]):
        if fusion == "score" and rrf_k != grid["rrf_k"][0]:
            continue  # k has no role in score fusion: score it once
        weights = {"dense": 1.0, "bm25": bm25_weight}
        ranked = [fused_ids({"dense": d, "bm25": b}, mode=fusion, rrf_k=rrf_k, weights=weights, top_k=DEPTH) for d, b in zip(dense_hits, bm25_hits)]
        values = retrieval_per_query(ranked, list(relevant))
        row = {"fusion": fusion, "rrf_k": rrf_k if fusion == "rrf" else None, "dense_weight": 1.0, "bm25_weight": bm25_weight, "mrr@10": sum(values["mrr@10"]) / len(ranked), "recall@1": sum(values["recall@1"]) / len(ranked), "recall@5": sum(values["recall@5"]) / len(ranked)}
        rows.append(row)
    default_distance = lambda r: (r["fusion"] != "rrf") + (r["rrf_k"] not in (None, 60.0)) + (r["bm25_weight"] != 1.0)  # noqa: E731
    rows.sort(key=lambda r: (-round(r["mrr@10"], 6), -round(r["recall@5"], 6), default_distance(r)))
    best = rows[0]
    log(f"tuned on val ({len(rows)} settings): best {best}")
    return best, rows


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------


# `full`'s retrieval stack and its one-part-off variants, named as eval.compare's systems
FULL_STACK = ("full", "full-no-rewrite", "full-base-embedder", "full-dense", "full-no-rerank")


def full_stack_variants(config: Config, names: Sequence[str]) -> dict[str, str]:
    """The retriever variant ([rw-][ft-]BASE[+rerank], rerank/evaluate.py) that runs exactly what
    `full` runs before generation under `config`, for each FULL_STACK name: `full` rewrites with
    rewrite.mode and rewrite.adapter (rw-; none: the question alone), retrieves with retrieve.mode
    over the fine-tuned embedder's vectors (index.finetuned_embedder; else index.embed_model's)
    and reranks when rerank.enabled (interpolated by rerank.retrieval_weight); each variant
    switches one part off. A part `full` does not use gives the same variant as `full` (the table
    says so)."""
    if config.rewrite.mode == "condense" and names:
        raise ConfigError(
            f"--retrievers {','.join(names)}: full's condense step (rewrite.mode=condense) is measured by --queries realistic --rewriters condense-trained, "
            f"whose clean family is every seed question of the split through full's stack with and without it (the paired change is printed); or measure the stack without it: --set rewrite.mode=none"
        )
    if config.rewrite.mode == "decompose" and names:
        raise ConfigError(
            f"--retrievers {','.join(names)}: full's first round with rewrite.mode=decompose retrieves each sub-question on its own, which eval.retrieval does not run; "
            f"measure the stack with --set rewrite.mode=hyde, multi or none"
        )
    rw = "rw-" if config.rewrite.mode != "none" else ""  # full's rewriter (rewrite_texts below)
    base, rerank = config.retrieve.mode, config.rerank.enabled
    ft = "ft-" if config.index.finetuned_embedder else ""  # the fine-tuned embedder (finetune.embedder.output)
    stack = {
        "full": (rw + ft + base, rerank),
        "full-no-rewrite": (ft + base, rerank),  # the question alone
        "full-base-embedder": (rw + base, rerank),  # index.embed_model's vectors
        "full-dense": (rw + ft + "dense", rerank),
        "full-no-rerank": (rw + ft + base, False),
    }
    return {name: stack[name][0] + ("+rerank" if stack[name][1] else "") for name in names}




def _copy_with(config: Config, **retrieve_values: Any) -> Config:
    from pipeline.config import config_from_dict

    raw = config.to_dict()
    raw["retrieve"].update(retrieve_values)
    return config_from_dict(raw)


def evaluate_open_book(
    config: Config,
    data_dir: str | Path,
    split: str,
    retrievers: Sequence[str] = RETRIEVERS,
    *,
    tune: bool = False,
    embed_model=None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from pipeline.index import KnowledgeBase
    from pipeline.retrieve import build_retriever

    nodes, questions, relevant = open_book_corpus(data_dir)
    needs_vectors = any(name.split("+")[0] in ("dense", "hybrid") for name in retrievers) or tune  # "hybrid+rerank" searches this kb too
    started = time.perf_counter()
    kb = KnowledgeBase.from_nodes(config, nodes, embed_model=embed_model, with_vectors=needs_vectors, show_progress=show_progress)
    build_seconds = time.perf_counter() - started
    log(f"open-book corpus: {len(nodes)} passages (train+val+test answers), {len(questions[split])} {split} questions; indexed in {build_seconds:.1f} s")
    result: dict[str, Any] = {"protocol": "open-book", "split": split, "data": str(data_dir), "corpus_size": len(nodes), "retrievers": {}, "settings": {}}
    per_query: dict[str, dict[str, list[float]]] = {}
    try:
        vectors = {s: query_embeddings(kb, config, questions[s]) for s in ([split, "val"] if tune else [split])} if needs_vectors else {}
        ranked: dict[str, list[list[str]]] = {}
        for name in [n for n in retrievers if n in RETRIEVERS]:
            retriever = build_retriever(config, name, DEPTH, kb=kb)
            hits, seconds = run_retriever(retriever, questions[split], embeddings=vectors.get(split), desc=name, show_progress=show_progress)
            ranked[name] = _ids(hits)
            result["retrievers"][name], per_query[name] = _retrieval_summary(ranked[name], relevant[split], config)
        stack = full_stack_variants(config, [n for n in retrievers if n in FULL_STACK])
        variants = [n for n in retrievers if n not in RETRIEVERS and n not in FULL_STACK]
        needed = list(dict.fromkeys([*variants, *(v for v in stack.values() if v not in RETRIEVERS)]))
        if needed:  # hybrid+rerank, ft-dense, rw-ft-dense, ...: see rerank/evaluate.py
            from rerank.evaluate import evaluate_variants

            rewrites = None
            if any(name.startswith("rw-") for name in needed):
                started = time.perf_counter()
                from rewrite.rewriter import rewrite_texts  # loads the LM stack only when a rewriter is asked for

                rewrites = rewrite_texts(config, questions[split], show_progress=show_progress)
                result["rewrites"] = {"mode": config.rewrite.mode, "adapter": config.rewrite.adapter, "seconds": round(time.perf_counter() - started, 1), "examples": [{"question": q, "texts": t} for q, t in zip(questions[split][:5], rewrites[:5])]}
                log(f"rewrote {len(rewrites)} questions in {result['rewrites']['seconds']} s")
            ranked |= evaluate_variants(config, nodes, questions[split], needed, kb=kb, depth=DEPTH, embeddings=vectors.get(split), rewrites=rewrites, show_progress=show_progress, log=log)
        for name in variants:
            result["retrievers"][name], per_query[name] = _retrieval_summary(ranked[name], relevant[split], config)
        for name, variant in stack.items():
            if variant not in ranked:  # a plain retriever not asked for by name
                hits, _ = run_retriever(build_retriever(config, variant, DEPTH, kb=kb), questions[split], embeddings=vectors.get(split), desc=name, show_progress=show_progress)
                ranked[variant] = _ids(hits)
            result["retrievers"][name], per_query[name] = _retrieval_summary(ranked[variant], relevant[split], config)
        if stack:
            result["full_stack"] = {name: {"runs": variant, "same_as_full": variant == stack.get("full")} for name, variant in stack.items()}
            result["settings"]["full"] = {"retrieve.mode": config.retrieve.mode, "rerank.enabled": config.rerank.enabled, "rerank.kind": config.rerank.kind, "rerank.model": config.rerank.model, "rerank.candidates": config.rerank.candidates, "rerank.retrieval_weight": config.rerank.retrieval_weight, "index.embed_model": config.index.embed_model, "index.finetuned_embedder": config.index.finetuned_embedder, "finetune.embedder.output": config.finetune.embedder.output, "rewrite.mode": config.rewrite.mode, "rewrite.adapter": config.rewrite.adapter if config.rewrite.mode != "none" else None}
        r = config.retrieve
        result["settings"]["hybrid"] = {"fusion": r.fusion, "rrf_k": r.rrf_k, "dense_weight": r.dense_weight, "bm25_weight": r.bm25_weight, "candidates": max(r.candidates, DEPTH)}
        if tune:
            candidates = max(config.retrieve.candidates, DEPTH)
            dense = build_retriever(config, "dense", candidates, kb=kb)
            bm25 = build_retriever(config, "bm25", candidates, kb=kb)
            dense_val, _ = run_retriever(dense, questions["val"], embeddings=vectors["val"], desc="val dense", show_progress=show_progress)
            bm25_val, _ = run_retriever(bm25, questions["val"], desc="val bm25", show_progress=show_progress)
            best, rows = tune_fusion(dense_val, bm25_val, relevant["val"], log=log)
            dense_only_val = retrieval_per_query(_ids(dense_val), relevant["val"])
            tuned = _copy_with(config, fusion=best["fusion"], rrf_k=best["rrf_k"] or config.retrieve.rrf_k, dense_weight=1.0, bm25_weight=best["bm25_weight"])
            hybrid = build_retriever(tuned, "hybrid", DEPTH, kb=kb)
            hits, seconds = run_retriever(hybrid, questions[split], embeddings=vectors[split], desc="hybrid-tuned", show_progress=show_progress)
            result["retrievers"]["hybrid-tuned"], per_query["hybrid-tuned"] = _retrieval_summary(_ids(hits), relevant[split], config)
            result["settings"]["hybrid-tuned"] = {k: best[k] for k in ("fusion", "rrf_k", "dense_weight", "bm25_weight")}
            result["tuning"] = {
                "on": "val",
                "settings_scored": len(rows),
                "best_val": {k: best[k] for k in ("mrr@10", "recall@1", "recall@5")},
                "dense_val_mrr@10": sum(dense_only_val["mrr@10"]) / len(dense_only_val["mrr@10"]),
                "top5": rows[:5],
            }
        for anchor in ("dense", "full"):  # paired_vs_dense; paired_vs_full: each part's Delta (full minus the variant)
            if anchor not in per_query:
                continue
            tests = result[f"paired_vs_{anchor}"] = {}
            for name in per_query:
                if name == anchor or (anchor == "full" and name not in FULL_STACK):
                    continue
                # vs dense: the retriever minus dense; vs full: full minus the variant (> 0: the part helps)
                a, b = (per_query[name]["mrr@10"], per_query[anchor]["mrr@10"]) if anchor == "dense" else (per_query[anchor]["mrr@10"], per_query[name]["mrr@10"])
                tests[name] = {
                    "metric": "mrr@10",
                    **paired_mean_test(a, b, samples=config.eval.bootstrap_samples, seed=config.eval.seed),
                }
    finally:
        kb.close()
    return result


def evaluate_closed_book(
    config: Config,
    data_dir: str | Path,
    split: str,
    retrievers: Sequence[str] = RETRIEVERS,
    *,
    sim_threshold: float = 0.8,
    embed_model=None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import numpy as np

    from pipeline.index import KnowledgeBase, qa_nodes
    from pipeline.retrieve import build_retriever

    train = load_split(data_dir, "train")
    queries = load_split(data_dir, split)
    nodes = qa_nodes(train, source=str(Path(data_dir) / "train.jsonl"), split="train")
    kb = KnowledgeBase.from_nodes(config, nodes, embed_model=embed_model, show_progress=show_progress)
    log(f"closed-book knowledge base: {len(nodes)} train pairs; {len(queries)} {split} questions")
    references = [r["answer"] for r in queries]
    result: dict[str, Any] = {"protocol": "closed-book", "split": split, "data": str(data_dir), "corpus_size": len(nodes), "sim_threshold": sim_threshold, "retrievers": {}}
    embed = kb.embed_model

    def unit(texts: list[str]) -> "np.ndarray":
        vectors = np.asarray(embed.get_text_embedding_batch(texts), dtype=float)
        return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)

    reference_vectors = unit(references)
    answer_vectors = dict(zip([n.node_id for n in nodes], unit([n.metadata["answer"] for n in nodes])))
    try:
        vectors = query_embeddings(kb, config, [r["question"] for r in queries])
        for name in retrievers:
            retriever = build_retriever(config, name, 5, kb=kb)
            hits, _ = run_retriever(retriever, [r["question"] for r in queries], embeddings=vectors, desc=name, show_progress=show_progress)
            top1 = [h[0].node.metadata["answer"] if h else "" for h in hits]
            cosines = [[float(answer_vectors[x.node.node_id] @ ref) for x in h] for h, ref in zip(hits, reference_vectors)]
            values = {
                "rougeL_top1": rouge_l_f1(top1, references),
                "answer_cosine_top1": [c[0] if c else 0.0 for c in cosines],
                "answer_hit@1": [float(bool(c) and c[0] >= sim_threshold) for c in cosines],
                "answer_hit@5": [float(any(x >= sim_threshold for x in c[:5])) for c in cosines],
            }
            result["retrievers"][name] = summarize(values, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
    finally:
        kb.close()
    return result


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def to_markdown(result: dict[str, Any]) -> str:
    if result.get("queries") == "realistic":  # --queries realistic: its own table (eval/realistic)
        from eval.realistic import to_markdown as realistic_markdown

        return realistic_markdown(result)
    order = METRIC_ORDER if result["protocol"] == "open-book" else CLOSED_ORDER
    lines = [f"### Retrieval, {result['protocol']}, split {result['split']} ({result['corpus_size']} passages, n={next(iter(result['retrievers'].values()))['n']})", ""]
    lines.append("| retriever | " + " | ".join(order) + " |")
    lines.append("|---" * (len(order) + 1) + "|")
    for name, summary in result["retrievers"].items():
        cells = [f"{summary[m]:.3f} [{summary['ci95'][m][0]:.3f}, {summary['ci95'][m][1]:.3f}]" for m in order]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, test in result.get("paired_vs_dense", {}).items():
        lines.append("")
        lines.append(f"{name} - dense, MRR@10: {test['diff']:+.3f} (95% CI [{test['ci95_low']:+.3f}, {test['ci95_high']:+.3f}], paired bootstrap p={test['p_value']:.3f})")
    for name, test in result.get("paired_vs_full", {}).items():
        same = " (the same retrieval as full: a part full does not use)" if result.get("full_stack", {}).get(name, {}).get("same_as_full") else ""
        lines.append("")
        lines.append(f"full - {name}, MRR@10: {test['diff']:+.3f} (95% CI [{test['ci95_low']:+.3f}, {test['ci95_high']:+.3f}], paired bootstrap p={test['p_value']:.3f}){same}")
    if "settings" in result and result["settings"]:
        lines.append("")
        for name, settings in result["settings"].items():
            lines.append(f"{name} settings: {json.dumps(settings)}")
    if "tuning" in result:
        t = result["settings"]["hybrid-tuned"]
        lines += [
            "",
            f"tuned on val over {result['tuning']['settings_scored']} settings: val MRR@10 {result['tuning']['best_val']['mrr@10']:.3f} (dense on val: {result['tuning']['dense_val_mrr@10']:.3f})",
            "profile block:",
            "```yaml",
            "retrieve:",
            f"  fusion: {t['fusion']}",
            *([f"  rrf_k: {t['rrf_k']}"] if t["rrf_k"] is not None else []),
            f"  dense_weight: {t['dense_weight']}",
            f"  bm25_weight: {t['bm25_weight']}",
            "```",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.retrieval",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(
        parser,
        data="Folder with train/val/test.jsonl. Default: data.dir of the profile.",
        split="Split whose questions are the queries. Default: test.",
        split_default="test",
        split_choices=("val", "test"),
        formats="Output: a Markdown table with 95%% intervals, or the JSON document. Default: md.",
        out="Also write the JSON result here (atomically), with the resolved config beside it.",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="open-book", help="open-book: all answers are the corpus, gold = own answer; closed-book: the train pairs are the knowledge base, answers are compared with the reference. Default: open-book.")
    parser.add_argument("--retrievers", default=",".join(RETRIEVERS), metavar="LIST", help="Comma-separated retrievers among dense, bm25, hybrid (hybrid uses the profile's fusion settings); open-book also takes [rw-][ft-]BASE[+rerank] variants: rw- searches with the question plus what full's rewriter writes (rewrite.mode, none meaning hyde; rewrite.adapter), ft- embeds the corpus with the fine-tuned embedder (finetune.embedder.output), +rerank reranks rerank.candidates passages with the cross-encoder at rerank.model, e.g. hybrid+rerank,ft-dense,ft-hybrid+rerank; and full's retrieval stack (what `full` runs before generation: rewrite, retrieve.mode, rerank with rerank.retrieval_weight) with its one-part-off variants full-no-rewrite, full-base-embedder, full-dense (no BM25), full-no-rerank, each with its paired Delta against full. Default: dense, bm25, hybrid.")
    parser.add_argument("--queries", choices=["clean", "realistic"], default="clean", help="clean: the split's seed questions; realistic: follow-ups, verbose and compound messages (hand-written and generated, eval/realistic) beside their clean oracle, through full's first stage and reranker (open-book only; --retrievers and --tune do not apply). Default: clean.")
    parser.add_argument("--cases", metavar="DIR", help="--queries realistic: " + CASES_HELP)
    parser.add_argument("--rewriters", metavar="LIST", help="--queries realistic: also search with what these rewriters write from each message (and its conversation), comma-separated among condense-base (zero-shot, ragft's condense prompt), condense-llamaindex (LlamaIndex's CondenseQuestionChatEngine prompt, same LM), condense-trained (rewrite.condense_adapter). Default: none.")
    parser.add_argument("--tune", action="store_true", help="open-book only: choose the hybrid's fusion (mode, k, weights) on val and report it once on --split as hybrid-tuned.")
    parser.add_argument("--sim-threshold", type=float, default=0.8, metavar="T", help="closed-book: cosine (MiniLM) between a retrieved answer and the reference that counts as a hit. Default: 0.8.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars or log lines; only the result.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.cli import config_for_data

        config = config_for_data(args)  # with --data: the artifacts eval.compare built for that data
        names = [n.strip() for n in args.retrievers.split(",") if n.strip()]
        from rerank.evaluate import VARIANTS

        bad = [n for n in names if n not in RETRIEVERS and (n not in (*VARIANTS, *FULL_STACK) or args.protocol != "open-book")]
        if bad or not names:
            raise ConfigError(f"--retrievers {args.retrievers!r}: unknown {bad}; choose among {', '.join(RETRIEVERS)} (open-book also: {', '.join(VARIANTS)}, and full's stack: {', '.join(FULL_STACK)})")
        if args.tune and args.protocol != "open-book":
            raise ConfigError("--tune needs --protocol open-book (the closed-book protocol has no gold passage to tune on)")
        log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
        if args.queries == "realistic":
            from eval.realistic.benchmark import evaluate_cli

            result = evaluate_cli(config, args, default_retrievers=",".join(RETRIEVERS), log=log)
        elif args.protocol == "open-book":
            result = evaluate_open_book(config, config.data.dir, args.split, names, tune=args.tune, show_progress=not args.quiet, log=log)
        else:
            result = evaluate_closed_book(config, config.data.dir, args.split, names, sim_threshold=args.sim_threshold, show_progress=not args.quiet, log=log)
        # what eval.publish needs to document a committed run: how it was made, at which revision, how long it took
        from pipeline.cli import run_record

        result["run"] = run_record("eval.retrieval", argv, started)
        if args.out:
            write_json(args.out, result)
            # named after the run: the folder may hold a comparison whose ragft_config.yaml describes it (results/seed)
            out = Path(args.out)
            save_resolved_config(config, out.parent, extra={"kind": "retrieval-eval", "protocol": args.protocol, "split": args.split, "queries": args.queries}, filename=f"{out.stem}.{RESOLVED_CONFIG_NAME}")
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
