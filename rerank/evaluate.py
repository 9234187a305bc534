"""Retrieval variants with the fine-tuned parts, for `eval.retrieval --retrievers ...`.

    python -m eval.retrieval --config tiny --set data.dir=runs/seed/data --set run_dir=runs/seed \\
        --protocol open-book --split test --retrievers dense,hybrid,hybrid+rerank,ft-dense,ft-hybrid+rerank

A variant name is `[rw-][ft-]BASE[+rerank]` with BASE one of dense, bm25, hybrid:

- `rw-` searches with the question and the rewrites the caller passes (`rewrites`: the hypothetical
  passages of full's rewriter, one list per question), as the engine does
  (`QueryBundle(query_str=question, custom_embedding_strs=[question, *rewrites])`: dense searches
  with the mean of their vectors, BM25 with their terms); the reranker still sees the question alone;
- `ft-` builds the corpus's dense vectors with the fine-tuned embedder (`finetune.embedder.output`,
  written by `python -m finetune.embedder`) instead of `index.embed_model`; BM25 is unchanged;
- `+rerank` retrieves `rerank.candidates` passages (50) with BASE and reorders all of them with the
  reranker `rerank.kind` names at `rerank.model` (the cross-encoder written by `python -m
  finetune.reranker`, or the query-likelihood adapter written by `python -m finetune.ql_reranker`)
  through `rerank.build_reranker`, so the metrics at 1..20 are those of the reranked list.

`python -m rerank.evaluate` compares rerankers over one first stage, each at a grid of
interpolation weights (the ideas table of a reranker experiment):

    python -m rerank.evaluate --data ../shared/data/seed-technical-qa/splits --split val \
        --set run_dir=runs/smollm2/data/splits-567263a4 --first-stage ft-dense \
        --reranker shipped=runs/smollm2/data/splits-567263a4/reranker --reranker ft-init=DIR --format md
    python -m rerank.evaluate ... --split test --weights 0.9 --reranker ft-init=DIR   # the val choice, once on test

Nothing here searches by itself: retrieval is `pipeline.retrieve.build_retriever` over an in-memory
`KnowledgeBase`, reranking is the postprocessor. A cross-encoder score depends only on (question,
passage), so scores are cached per (question, node id) and shared by all `+rerank` variants of a run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

from pipeline.cli import add_io_arguments, config_for_data, run_record
from pipeline.config import Config, ConfigError, add_config_arguments
from pipeline.data import open_book_corpus
from pipeline.errors import run_cli
from pipeline.fileio import write_json
from pipeline.index import KnowledgeBase, finetuned_embedder_config
from pipeline.metrics import paired_mean_test, retrieval_per_query, summarize
from pipeline.models import ModelNotFoundError, check_adapter_folder, resolve_model

if TYPE_CHECKING:
    from pipeline.index import KnowledgeBase

BASES = ("dense", "bm25", "hybrid")
VARIANT_PATTERN = re.compile(r"^(rw-)?(ft-)?(dense|bm25|hybrid)(\+rerank)?$")
VARIANTS = tuple(f"{rw}{ft}{base}{rr}" for rw in ("", "rw-") for ft in ("", "ft-") for base in BASES for rr in ("", "+rerank") if rw or ft or rr)


class Variant(NamedTuple):
    rewritten: bool  # rw-: searches with the caller's rewrites too
    finetuned: bool  # ft-: the fine-tuned embedder's vectors
    base: str  # dense | bm25 | hybrid
    rerank: bool  # +rerank: the cross-encoder reorders rerank.candidates passages


def is_variant(name: str) -> bool:
    """True for the names this module evaluates (a plain dense/bm25/hybrid is not one)."""
    return name in VARIANTS


def parse_variant(name: str) -> Variant:
    """`rw-ft-hybrid+rerank` -> Variant(rewritten=True, finetuned=True, base="hybrid", rerank=True)."""
    match = VARIANT_PATTERN.match(name)
    if not match:
        raise ConfigError(f"retriever variant {name!r} is not [rw-][ft-](dense|bm25|hybrid)[+rerank]; e.g. hybrid+rerank, ft-dense, rw-ft-dense, ft-hybrid+rerank")
    return Variant(bool(match.group(1)), bool(match.group(2)), match.group(3), bool(match.group(4)))


def check_reranker(config: Config) -> None:
    if config.rerank.kind == "query-likelihood":
        try:
            check_adapter_folder(config.rerank.model, allow_pickle=True)  # its weights are checked when they load
        except ModelNotFoundError:
            raise ConfigError(
                f"+rerank variants with rerank.kind=query-likelihood need the LoRA adapter at rerank.model={config.rerank.model}, which does not exist; "
                f"train it first: python -m finetune.ql_reranker --config {config.profile} (it writes finetune.ql_reranker.output)"
            ) from None
        return
    try:
        resolve_model(config.rerank.model, allow_download=False)
    except ModelNotFoundError:
        raise ConfigError(
            f"+rerank variants need the cross-encoder at rerank.model={config.rerank.model}, which cannot be found; "
            f"train it first: python -m finetune.reranker --config {config.profile} (or set rerank.model to a cross-encoder folder or cached hub id)"
        ) from None


class ScoreCache:
    """Cross-encoder logits per (question, node id), filled lazily in one batch per question."""

    def __init__(self, reranker: Any):
        self.reranker = reranker
        self.scores: dict[tuple[str, str], float] = {}

    def order(self, question: str, hits: Sequence[Any]) -> list[str]:
        """Node ids of `hits` in the reranker's order: by logit, or interpolated with the hits'
        scores when its `retrieval_weight` > 0 (stable: ties keep the retriever's order)."""
        from llama_index.core.schema import MetadataMode

        from rerank.cross_encoder import interpolated_order

        missing = [h for h in hits if (question, h.node.node_id) not in self.scores]
        if missing:
            logits = self.reranker.score_pairs(question, [h.node.get_content(metadata_mode=MetadataMode.NONE) for h in missing])
            for hit, logit in zip(missing, logits):
                self.scores[(question, hit.node.node_id)] = float(logit)
        logits = [self.scores[(question, h.node.node_id)] for h in hits]
        order, _ = interpolated_order(logits, [h.score for h in hits], self.reranker.retrieval_weight)
        return [hits[i].node.node_id for i in order]


def evaluate_variants(
    config: Config,
    nodes: Sequence[Any],
    questions: Sequence[str],
    names: Sequence[str],
    *,
    kb: "KnowledgeBase | None" = None,
    finetuned_kb: "KnowledgeBase | None" = None,
    depth: int = 20,
    embeddings: Any = None,
    rewrites: Optional[Sequence[Sequence[str]]] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda *_: None,
) -> dict[str, list[list[str]]]:
    """Ranked node ids per question for each variant name (see the module doc). `kb` is the
    caller's knowledge base over `nodes` with the base embedder (reused for non-ft variants),
    `finetuned_kb` the same with the fine-tuned embedder (reused for ft- variants; callers that
    evaluate several times pass it so the corpus is embedded once), and `embeddings` its query vectors of `questions` (computed here when not given); `rewrites` (one
    list of texts per question) is what the `rw-` variants search with besides the question."""
    from llama_index.core.schema import QueryBundle
    from tqdm.auto import tqdm

    from pipeline.retrieve import DenseRetriever, build_retriever
    from rerank import build_reranker

    parsed = {name: parse_variant(name) for name in names}
    if any(v.rerank for v in parsed.values()):
        check_reranker(config)
    if any(v.rewritten for v in parsed.values()) and (rewrites is None or len(rewrites) != len(questions)):
        raise ValueError(f"evaluate_variants: the rw- variants need one list of rewrites per question ({len(questions)}); got {None if rewrites is None else len(rewrites)}")
    cache = ScoreCache(build_reranker(config))
    bases: dict[bool, tuple[Config, KnowledgeBase]] = {}
    owned: list[KnowledgeBase] = []
    vectors: dict[bool, Any] = {}
    out: dict[str, list[list[str]]] = {}
    try:
        for name, (rewritten, ft, base, rerank) in parsed.items():
            if ft not in bases:
                if ft:
                    ft_config = finetuned_embedder_config(config)  # its dir is unused: an in-memory kb
                    if finetuned_kb is None:
                        log(f"embedding the corpus with the fine-tuned embedder {ft_config.index.embed_model}")
                        finetuned_kb = KnowledgeBase.from_nodes(ft_config, nodes, show_progress=show_progress)
                        owned.append(finetuned_kb)
                    bases[True] = (ft_config, finetuned_kb)
                else:
                    if kb is None:
                        kb = KnowledgeBase.from_nodes(config, nodes, show_progress=show_progress)
                        owned.append(kb)
                    bases[False] = (config, kb)
            cfg, base_kb = bases[ft]
            if ft not in vectors and base != "bm25":
                # query vectors in one batch (much faster than one by one); the caller's for the base kb
                vectors[ft] = embeddings if (not ft and embeddings is not None) else DenseRetriever(base_kb, top_k=1).embed_queries(list(questions))
            k = max(config.rerank.candidates, depth) if rerank else depth
            retriever = build_retriever(cfg, base, k, kb=base_kb)
            ranked = []
            for i, question in enumerate(tqdm(questions, desc=name, unit="q", disable=not show_progress, leave=False)):
                query_vector = vectors.get(ft) if base != "bm25" else None
                texts = [t for t in rewrites[i] if t.strip()] if rewritten else []
                # with rewrites the retriever embeds [question, *texts] itself and averages (the question's vector first)
                bundle = QueryBundle(query_str=question, custom_embedding_strs=[question, *texts] if texts else None, embedding=list(query_vector[i]) if query_vector is not None else None)
                hits = retriever.retrieve(bundle)
                ranked.append(cache.order(question, hits) if rerank else [h.node.node_id for h in hits])
            out[name] = ranked
    finally:
        for owned_kb in owned:
            owned_kb.close()
    return out


# --------------------------------------------------------------------------------------------
# rerankers over one first stage, at a grid of interpolation weights
# --------------------------------------------------------------------------------------------

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def load_scorer(config: Config, model: str) -> Any:
    """The (question, passages) -> scores object of a reranker folder: a LoRA adapter folder that
    finetune.ql_reranker trained is the generator's base LM as a query-likelihood reranker
    (rerank/query_likelihood.py); anything else is a cross-encoder."""
    if (Path(model) / "adapter_config.json").is_file():
        from rerank.query_likelihood import QueryLikelihoodReranker, is_ql_adapter

        if not is_ql_adapter(model):
            raise ConfigError(
                f"--reranker {model}: a LoRA adapter that python -m finetune.ql_reranker did not train (its train_report.json does not say so); "
                "only query-likelihood adapters rerank. Fix: train one with python -m finetune.ql_reranker, or pass a cross-encoder folder"
            )
        return QueryLikelihoodReranker.from_config(config, model=model)
    from rerank.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker.from_config(config, model=model)


def interpolation_grid(
    config: Config,
    data_dir: str,
    split: str,
    first_stage: str,
    rerankers: dict[str, str],
    *,
    weights: Sequence[float] = WEIGHTS,
    embed_model: Any = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda *_: None,
) -> dict[str, Any]:
    """Open-book MRR@10 / R@1 of `first_stage` (a variant without rw- or +rerank) reordered by each
    reranker at each weight w ((1 - w) * reranker + w * first stage, min-max per query, as
    CrossEncoderReranker does with rerank.retrieval_weight), over its rerank.candidates passages.
    Every (question, candidate) is scored once per reranker. For each reranker: the best weight on
    this split (ties: the smaller weight), its summary with intervals, the paired MRR@10 difference
    against the first stage at that weight, and the milliseconds scoring one question's candidates
    took (p50). Choose the weight on val; pass that one weight to report test. `embed_model`
    replaces the first stage's embedder (tests)."""
    import statistics
    import time

    from llama_index.core.schema import MetadataMode, QueryBundle
    from tqdm.auto import tqdm

    from pipeline.retrieve import DenseRetriever, build_retriever
    from rerank.cross_encoder import interpolated_order

    variant = parse_variant(first_stage)
    if variant.rewritten or variant.rerank:
        raise ConfigError(f"--first-stage {first_stage!r}: give a retriever without rw- or +rerank, e.g. dense, hybrid, ft-dense")
    if not rerankers:
        raise ConfigError("no reranker to compare: give --reranker NAME=DIR at least once")
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise ConfigError(f"--weights {list(weights)}: each weight must lie in [0, 1] (0: the reranker alone, 1: the first stage's order)")
    nodes, questions, relevant = open_book_corpus(data_dir)
    queries, gold = questions[split], relevant[split]
    cfg = finetuned_embedder_config(config) if variant.finetuned else config
    kb = KnowledgeBase.from_nodes(cfg, nodes, embed_model=embed_model, with_vectors=variant.base != "bm25", show_progress=show_progress)
    samples, seed = config.eval.bootstrap_samples, config.eval.seed
    try:
        vectors = DenseRetriever(kb, top_k=1).embed_queries(queries) if variant.base != "bm25" else None
        retriever = build_retriever(cfg, variant.base, config.rerank.candidates, kb=kb)
        hits = [retriever.retrieve(QueryBundle(query_str=q, embedding=list(vectors[i]) if vectors is not None else None)) for i, q in enumerate(tqdm(queries, desc=first_stage, unit="q", disable=not show_progress, leave=False))]
    finally:
        kb.close()
    first = retrieval_per_query([[h.node.node_id for h in hs] for hs in hits], gold)
    result: dict[str, Any] = {
        "protocol": "open-book",
        "split": split,
        "data": str(data_dir),
        "n": len(queries),
        "candidates": config.rerank.candidates,
        "first_stage": {"name": first_stage, "embed_model": cfg.index.embed_model, **summarize(first, samples=samples, seed=seed)},
        "rerankers": {},
    }
    log(f"{first_stage}: MRR@10 {result['first_stage']['mrr@10']:.4f}, R@1 {result['first_stage']['recall@1']:.4f} ({len(queries)} {split} questions, {config.rerank.candidates} candidates each)")
    for name, model in rerankers.items():
        scorer = load_scorer(config, model)
        logits, millis = [], []
        for q, hs in zip(queries, tqdm(hits, desc=name, unit="q", disable=not show_progress, leave=False)):
            started = time.perf_counter()
            logits.append([float(x) for x in scorer.score_pairs(q, [h.node.get_content(metadata_mode=MetadataMode.NONE) for h in hs])])
            millis.append((time.perf_counter() - started) * 1000)
        per_weight: dict[float, dict[str, list[float]]] = {}
        for w in weights:
            ranked = [[hs[i].node.node_id for i in interpolated_order(lg, [h.score for h in hs], w)[0]] for hs, lg in zip(hits, logits)]
            per_weight[w] = retrieval_per_query(ranked, gold)
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        best = max(weights, key=lambda w: (round(mean(per_weight[w]["mrr@10"]), 9), -w))
        a, b = per_weight[best]["mrr@10"], first["mrr@10"]
        result["rerankers"][name] = {
            "model": model,
            "weights": {str(w): {"mrr@10": mean(v["mrr@10"]), "recall@1": mean(v["recall@1"])} for w, v in per_weight.items()},
            "best_weight": best,
            "at_best": summarize(per_weight[best], samples=samples, seed=seed),
            "delta_vs_first_stage": paired_mean_test(a, b, samples=samples, seed=seed),
            "ms_per_query_p50": round(statistics.median(millis), 1),
        }
        row = result["rerankers"][name]
        log(f"{name}: " + " ".join(f"w{w}:{v['mrr@10']:.4f}" for w, v in row["weights"].items()) + f"; best w {best}: Delta {row['delta_vs_first_stage']['diff']:+.4f}; {row['ms_per_query_p50']} ms/query")
    return result


def grid_markdown(result: dict[str, Any]) -> str:
    first = result["first_stage"]
    weights = list(next(iter(result["rerankers"].values()))["weights"]) if result["rerankers"] else []
    lines = [
        f"### Rerankers over {first['name']}, open-book, split {result['split']} (n={result['n']}, {result['candidates']} candidates)",
        "",
        f"First stage alone: MRR@10 {first['mrr@10']:.3f} [{first['ci95']['mrr@10'][0]:.3f}, {first['ci95']['mrr@10'][1]:.3f}], R@1 {first['recall@1']:.3f}.",
        "MRR@10 at each weight w of the first stage's score ((1 - w) * reranker + w * first stage, min-max per query; w = 0: the reranker alone).",
        "",
        "| reranker | " + " | ".join(f"w={w}" for w in weights) + " | best w | MRR@10 at best | R@1 at best | Delta vs first stage [95% CI] | ms/query p50 |",
        "|---" * (len(weights) + 6) + "|",
    ]
    for name, row in result["rerankers"].items():
        best, delta = row["at_best"], row["delta_vs_first_stage"]
        cells = [f"{row['weights'][w]['mrr@10']:.3f}" for w in weights]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['best_weight']} | {best['mrr@10']:.3f} [{best['ci95']['mrr@10'][0]:.3f}, {best['ci95']['mrr@10'][1]:.3f}] | {best['recall@1']:.3f} | {delta['diff']:+.4f} [{delta['ci95_low']:+.4f}, {delta['ci95_high']:+.4f}] | {row['ms_per_query_p50']} |")
    lines += ["", "The best weight is chosen on this split: on val that is the selection; on test pass the val choice as the one weight."]
    return "\n".join(lines)


def build_parser() -> "argparse.ArgumentParser":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rerank.evaluate", description="Compare rerankers over one first stage at a grid of interpolation weights (open-book protocol).", epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_io_arguments(
        parser,
        data="Folder with train/val/test.jsonl (the open-book corpus is every answer). Default: data.dir of the profile.",
        split="Split whose questions are the queries. Default: val (choose the weight there; report test with --weights W).",
        split_default="val",
        split_choices=("val", "test"),
        formats="Output: a Markdown table or the JSON document. Default: md.",
        out="Also write the JSON result here (atomically).",
    )
    parser.add_argument("--first-stage", default="ft-dense", metavar="RETRIEVER", help="[ft-](dense|bm25|hybrid): the retriever whose rerank.candidates passages are reordered. Default: ft-dense (full's first stage in the smollm2 profile).")
    parser.add_argument("--reranker", action="append", default=[], metavar="NAME=DIR", help="A reranker to compare, under a name for the table (repeatable): a cross-encoder folder (python -m finetune.reranker) or a query-likelihood LoRA adapter of the generator's base LM (python -m finetune.ql_reranker).")
    parser.add_argument("--weights", default=",".join(str(w) for w in WEIGHTS), metavar="LIST", help=f"Comma-separated first-stage weights in [0, 1]. Default: {','.join(str(w) for w in WEIGHTS)}.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars or log lines; only the result.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import json
    import sys
    import time

    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        config = config_for_data(args)
        rerankers = {}
        for item in args.reranker:
            name, sep, model = item.partition("=")
            if not sep or not name or not model:
                raise ConfigError(f"--reranker {item!r}: write NAME=DIR, e.g. shipped=runs/smollm2/reranker")
            rerankers[name] = model
        try:
            weights = [float(w) for w in args.weights.split(",") if w.strip()]
        except ValueError:
            raise ConfigError(f"--weights {args.weights!r}: write comma-separated numbers in [0, 1], e.g. 0,0.5,0.9") from None
        log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
        result = interpolation_grid(config, config.data.dir, args.split, args.first_stage, rerankers, weights=weights, show_progress=not args.quiet, log=log)
        result["run"] = run_record("rerank.evaluate", argv, started)
        if args.out:
            write_json(args.out, result)
        print(json.dumps(result, indent=2) if args.format == "json" else grid_markdown(result))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
