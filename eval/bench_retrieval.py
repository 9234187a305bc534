"""Retrieval benchmark: ingestion nodes/s, query latency p50/p95 of dense/BM25/hybrid, peak memory, vs baselines.

    python -m eval.bench retrieval                                    # sizes 2000, 20000, 100000
    python -m eval.bench retrieval --sizes 2000,20000 --queries 100 --out runs/bench/retrieval.json
    python -m eval.bench retrieval --sizes 500 --queries 20 --ingest-limit 300    # a one-minute smoke run

What is measured, per corpus size:
  * query latency p50/p95 (ms) of `build_retriever(config, "dense"|"bm25"|"hybrid", top_k)`, the
    system's own retrievers (Chroma HNSW + bm25s + fusion), each query a plain string, so it
    includes embedding the question; one warm-up query per retriever is not timed; and again as
    "search" latency with the query vector given in the QueryBundle (the index's own cost, which
    on a busy CPU is far less noisy than the end-to-end figure);
  * the reference experiment's retriever: flat inner product over normalized MiniLM vectors, top-5,
    numpy (the seed used FAISS IndexFlatIP, the same arithmetic), also embedding each question;
  * a plain LlamaIndex `VectorStoreIndex` over the same vectors with every default
    (SimpleVectorStore, `as_retriever()`, similarity_top_k=2);
  * the ratios of each of ours to both baselines (> 1: ours is slower);
  * peak resident memory of the process after each size (ru_maxrss; it only grows).
Ingestion: the real `pipeline.index.ingest` (IngestionPipeline, MiniLM, persistent Chroma,
docstore, BM25) into a temporary folder on the first min(size, --ingest-limit) pairs of each size,
reported as nodes/s, with the time of an immediate re-run (nothing to do: idempotence cost).

Corpora: the seed data's question/answer pairs (train+val+test, 1806) as "Question/Answer" nodes;
above that, synthetic pairs: a seed question paired with an answer recombined from 2-3 sentences
drawn at random (seeded) from different seed answers. Every unique seed sentence is embedded with
MiniLM once, and a synthetic passage's vector is the normalized mean of its sentences' vectors
(embedding 100k passages would take hours on a laptop CPU; the search cost depends on the number
and dimension of vectors, not on their exact values); `--embed-all` embeds every passage instead.
Queries: the seed test questions (first --queries).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import DataError, load_split
from pipeline.errors import run_cli
from pipeline.fileio import write_json, write_jsonl
from pipeline.index import KnowledgeBase, qa_nodes, qa_text

DEFAULT_SIZES = (2000, 20000, 100000)
SEED_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-technical-qa" / "splits"


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 3]


def build_corpus(records: Sequence[dict[str, str]], size: int, seed: int) -> list[dict[str, Any]]:
    """`size` QA records: the real ones first, then synthetic ones (see the module doc). Each
    carries `sentences` (the answer's sentences) so vectors can be composed."""
    rng = random.Random(seed)
    corpus = [{"question": r["question"], "answer": r["answer"], "sentences": None} for r in records[:size]]
    pools = [_sentences(r["answer"]) for r in records]
    pools = [p for p in pools if p]
    seen = {(r["question"], r["answer"]) for r in corpus}
    while len(corpus) < size:
        n = rng.choice((2, 3))
        chosen = [rng.choice(rng.choice(pools)) for _ in range(n)]
        question = rng.choice(records)["question"]
        answer = " ".join(chosen)
        if (question, answer) in seen:
            continue
        seen.add((question, answer))
        corpus.append({"question": question, "answer": answer, "sentences": chosen})
    return corpus


def corpus_vectors(corpus: Sequence[dict[str, Any]], embed_model, *, embed_all: bool, show_progress: bool) -> "Any":
    """Unit vectors of every corpus node (see the module doc for composed synthetic vectors)."""
    import numpy as np


    def unit(rows):
        rows = np.asarray(rows, dtype=np.float32)
        return rows / np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12, None)

    real = [i for i, r in enumerate(corpus) if embed_all or r["sentences"] is None]
    real_vectors = unit(embed_model.get_text_embedding_batch([qa_text(corpus[i]["question"], corpus[i]["answer"]) for i in real], show_progress=show_progress)) if real else None
    dim = real_vectors.shape[1] if real_vectors is not None else None
    synthetic = [i for i, r in enumerate(corpus) if not (embed_all or r["sentences"] is None)]
    sentence_vectors: dict[str, Any] = {}
    if synthetic:
        unique = sorted({s for i in synthetic for s in corpus[i]["sentences"]})
        embedded = unit(embed_model.get_text_embedding_batch(unique, show_progress=show_progress))
        sentence_vectors = dict(zip(unique, embedded))
        dim = embedded.shape[1]
    vectors = np.zeros((len(corpus), dim), dtype=np.float32)
    if real:
        vectors[real] = real_vectors
    for i in synthetic:
        vectors[i] = np.mean([sentence_vectors[s] for s in corpus[i]["sentences"]], axis=0)
    return unit(vectors)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def time_queries(fn: Callable[[str], Any], queries: Sequence[str], *, desc: str, show_progress: bool) -> dict[str, float]:
    from tqdm.auto import tqdm

    fn(queries[0])  # warm-up: lazy loads and caches are not part of a query's latency
    seconds = []
    for q in tqdm(queries, desc=desc, unit="q", disable=not show_progress, leave=False):
        started = time.perf_counter()
        fn(q)
        seconds.append(time.perf_counter() - started)
    return {"p50_ms": 1000 * percentile(seconds, 50), "p95_ms": 1000 * percentile(seconds, 95), "mean_ms": 1000 * sum(seconds) / len(seconds), "n": len(seconds)}


def time_ingestion(config: Config, records: Sequence[dict[str, str]], embed_model, *, show_progress: bool) -> dict[str, Any]:
    """The real ingestion (pipeline.index.ingest) of `records` into a temporary index."""
    from pipeline.index import ingest

    work = Path(tempfile.mkdtemp(prefix="ragft-bench-ingest-"))
    try:
        write_jsonl(work / "data" / "train.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in records])
        from pipeline.config import config_from_dict

        raw = config.to_dict()
        raw["data"].update({"dir": str(work / "data"), "knowledge_splits": ["train"]})
        raw["index"].update({"dir": str(work / "index"), "chroma_host": None, "sources": []})
        bench_config = config_from_dict(raw)
        started = time.perf_counter()
        report = ingest(bench_config, embed_model=embed_model, show_progress=show_progress, log=lambda *_: None)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = ingest(bench_config, embed_model=embed_model, show_progress=False, log=lambda *_: None)
        second = time.perf_counter() - started
        return {"nodes": report.nodes_added, "seconds": round(first, 2), "nodes_per_s": report.nodes_added / first, "rerun_seconds": round(second, 2), "rerun_added": again.nodes_added}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def run_benchmark(
    config: Config,
    *,
    data_dir: str | Path,
    sizes: Sequence[int] = DEFAULT_SIZES,
    queries: int = 100,
    top_k: int = 5,
    ingest_limit: int = 2000,
    embed_all: bool = False,
    seed: int = 42,
    embed_model=None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every measurement (see the module doc); `embed_model` defaults to the config's."""
    import numpy as np
    from llama_index.core import VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from pipeline.encoders import load_embedder
    from pipeline.retrieve import build_retriever

    records = [r for split in ("train", "val", "test") for r in load_split(data_dir, split)]
    questions = [r["question"] for r in load_split(data_dir, "test")][:queries]
    if not questions:
        raise DataError(f"{data_dir}: the test split has no questions to time")
    embed_model = embed_model or load_embedder(config)
    if isinstance(embed_model, HuggingFaceEmbedding):
        model = embed_model._model  # the reference calls sentence-transformers directly, as the seed did

        def encode(question: str):
            return model.encode([question], normalize_embeddings=True, convert_to_numpy=True)[0]
    else:

        def encode(question: str):
            vector = np.asarray(embed_model.get_query_embedding(question))
            return vector / max(float(np.linalg.norm(vector)), 1e-12)
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
        "settings": {"data": str(data_dir), "queries": len(questions), "top_k": top_k, "ingest_limit": ingest_limit, "embed_all": embed_all, "seed": seed, "retrieve": {k: getattr(config.retrieve, k) for k in ("fusion", "rrf_k", "dense_weight", "bm25_weight", "candidates")}},
        "sizes": [],
    }
    # one corpus for the largest size: a smaller one is its prefix (same seeded draws), so the
    # vectors are computed once and sliced
    log(f"building a corpus of {max(sizes)} pairs and its vectors")
    full_corpus = build_corpus(records, max(sizes), seed)
    started = time.perf_counter()
    full_vectors = corpus_vectors(full_corpus, embed_model, embed_all=embed_all, show_progress=show_progress)
    result["vectors_seconds"] = round(time.perf_counter() - started, 2)
    ingested: dict[int, dict[str, Any]] = {}
    for size in sizes:
        row: dict[str, Any] = {"size": size}
        corpus, vectors = full_corpus[:size], full_vectors[:size]
        row["synthetic"] = sum(1 for r in corpus if r["sentences"] is not None)
        n_ingest = min(size, ingest_limit)
        if n_ingest > 0:
            if n_ingest not in ingested:  # the same pairs were already timed at a smaller size
                log(f"size {size}: ingesting {n_ingest} pairs with pipeline.index.ingest")
                ingested[n_ingest] = time_ingestion(config, corpus[:n_ingest], embed_model, show_progress=show_progress)
            row["ingestion"] = ingested[n_ingest]
        nodes = qa_nodes(corpus)
        if len(nodes) != len(corpus):
            raise RuntimeError("corpus pairs must be distinct")  # build_corpus guarantees it
        started = time.perf_counter()
        kb = KnowledgeBase.from_nodes(config, nodes, embed_model=embed_model, embeddings=vectors)
        kb.bm25  # build now: its cost belongs to indexing, not to the first query
        row["index_build_seconds"] = round(time.perf_counter() - started, 2)
        latency: dict[str, Any] = {}
        search: dict[str, Any] = {}  # the same, with query vectors computed beforehand: index cost only
        from llama_index.core.schema import QueryBundle, TextNode

        query_vectors = {q: np.asarray(encode(q), dtype=np.float32) for q in questions}

        def bundle(question: str) -> QueryBundle:
            return QueryBundle(query_str=question, embedding=query_vectors[question].tolist())

        try:
            for mode in ("dense", "bm25", "hybrid"):
                retriever = build_retriever(config, mode, top_k, kb=kb)
                latency[mode] = time_queries(retriever.retrieve, questions, desc=f"{size} {mode}", show_progress=show_progress)
                search[mode] = time_queries(lambda q, r=retriever: r.retrieve(bundle(q)), questions, desc=f"{size} {mode} search", show_progress=show_progress)

            def flat_ip(q):
                scores = vectors @ q
                top = np.argpartition(-scores, top_k)[:top_k]
                return top[np.argsort(-scores[top])]

            latency["reference_flat_ip"] = time_queries(lambda q: flat_ip(encode(q).astype(np.float32)), questions, desc=f"{size} reference", show_progress=show_progress)
            search["reference_flat_ip"] = time_queries(lambda q: flat_ip(query_vectors[q]), questions, desc=f"{size} reference search", show_progress=show_progress)
            vsi_nodes = [TextNode(id_=n.node_id, text=n.text, embedding=vectors[i].tolist()) for i, n in enumerate(nodes)]
            started = time.perf_counter()
            vsi = VectorStoreIndex(nodes=vsi_nodes, embed_model=embed_model, show_progress=False)
            row["vsi_build_seconds"] = round(time.perf_counter() - started, 2)
            vsi_retriever = vsi.as_retriever()
            latency["llamaindex_vectorstoreindex"] = time_queries(vsi_retriever.retrieve, questions, desc=f"{size} VectorStoreIndex", show_progress=show_progress)
            search["llamaindex_vectorstoreindex"] = time_queries(lambda q: vsi_retriever.retrieve(bundle(q)), questions, desc=f"{size} VectorStoreIndex search", show_progress=show_progress)
            del vsi, vsi_nodes, vsi_retriever
        finally:
            kb.close()
        for table in (latency, search):
            for mode in ("dense", "bm25", "hybrid"):
                table[mode]["p50_vs_reference"] = table[mode]["p50_ms"] / table["reference_flat_ip"]["p50_ms"]
                table[mode]["p50_vs_vectorstoreindex"] = table[mode]["p50_ms"] / table["llamaindex_vectorstoreindex"]["p50_ms"]
        row["latency"] = latency
        row["search_latency"] = search
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result["sizes"].append(row)
        log(f"size {size}: dense p50 {latency['dense']['p50_ms']:.1f} ms, bm25 {latency['bm25']['p50_ms']:.1f} ms, hybrid {latency['hybrid']['p50_ms']:.1f} ms, reference {latency['reference_flat_ip']['p50_ms']:.1f} ms, VectorStoreIndex {latency['llamaindex_vectorstoreindex']['p50_ms']:.1f} ms; peak RSS {row['peak_rss_mb']} MB")
        del kb, nodes, vectors, corpus
    return result


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"### Retrieval benchmark ({s['queries']} queries, top-{s['top_k']}, {result['machine']['cpu_count']} CPUs, Python {result['machine']['python']})",
        "",
        "End to end: the question as a string (embedding included). Search: the query vector given (index cost only).",
        "",
        "| passages (synthetic) | retriever | p50 ms | p95 ms | p50 / reference | p50 / VectorStoreIndex | search p50 ms | search p95 ms | search p50 / reference | search p50 / VectorStoreIndex |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(v):
        ratios = f"{v['p50_vs_reference']:.3g} | {v['p50_vs_vectorstoreindex']:.3g}" if "p50_vs_reference" in v else "- | -"
        return f"{v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {ratios}"

    for row in result["sizes"]:
        for name in ("dense", "bm25", "hybrid", "reference_flat_ip", "llamaindex_vectorstoreindex"):
            lines.append(f"| {row['size']} ({row['synthetic']}) | {name} | {cells(row['latency'][name])} | {cells(row['search_latency'][name])} |")
    lines += ["", "| passages | ingestion nodes | ingestion s | nodes/s | re-run s (added) | index build s | VectorStoreIndex build s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for row in result["sizes"]:
        ing = row.get("ingestion") or {}
        lines.append(
            f"| {row['size']} | {ing.get('nodes', '-')} | {ing.get('seconds', '-')} | {ing.get('nodes_per_s', 0):.1f} | {ing.get('rerun_seconds', '-')} ({ing.get('rerun_added', '-')}) | {row['index_build_seconds']} | {row['vsi_build_seconds']} | {row['peak_rss_mb']} |"
        )
    lines += ["", f"corpus vectors (real pairs embedded, synthetic composed from sentence vectors{' (all embedded)' if s['embed_all'] else ''}): {result['vectors_seconds']} s"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench retrieval",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_io_arguments(
        parser,
        data=f"Folder with train/val/test.jsonl whose pairs seed the corpora and whose test questions are the queries. Default: {SEED_SPLITS} when present, else data.dir of the profile.",
        formats="Output format. Default: md.",
        out="Also write the JSON result here, with the resolved config beside it.",
    )
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), metavar="N,N,...", help="Corpus sizes in passages. Default: 2000,20000,100000.")
    parser.add_argument("--queries", type=int, default=100, metavar="N", help="Timed queries per retriever and size (the first N test questions). Default: 100.")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="Passages returned per query by our retrievers and the reference. Default: 5.")
    parser.add_argument("--ingest-limit", type=int, default=2000, metavar="N", help="Ingestion is timed on at most N pairs per size (MiniLM embedding dominates: about N/100 s on 2 cores); 0 skips it. Default: 2000.")
    parser.add_argument("--embed-all", action="store_true", help="Embed every synthetic passage with the model instead of composing its vector from sentence vectors (slow at 100k).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the synthetic corpora. Default: 42.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars or log lines.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        config = config_from_args(args)
        try:
            sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--sizes {args.sizes!r} must be comma-separated integers, e.g. 2000,20000") from None
        if not sizes or min(sizes) < args.top_k + 1:
            raise ConfigError(f"--sizes {args.sizes!r}: every size must exceed --top-k ({args.top_k})")
        if args.queries <= 0:
            raise ConfigError(f"--queries must be > 0; got {args.queries}")
        data = args.data or (str(SEED_SPLITS) if (SEED_SPLITS / "test.jsonl").is_file() else config.data.dir)
        log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
        result = run_benchmark(config, data_dir=data, sizes=sizes, queries=args.queries, top_k=args.top_k, ingest_limit=args.ingest_limit, embed_all=args.embed_all, seed=args.seed, show_progress=not args.quiet, log=log)
        if args.out:
            write_json(args.out, result)
            save_resolved_config(config, Path(args.out).parent, extra={"kind": "benchmark-retrieval"})
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
