"""Scale benchmark: ~100k passages in the embedded Chroma and in a Chroma server, hybrid + rerank p50/p95 under 1, 4, 8 concurrent clients.

    python -m eval.bench scale                                                # 100k passages, 60 s per level: ~80 min, see below
    python -m eval.bench scale --passages 5000 --seconds 10 --json runs/bench/scale.json
    python -m eval.bench scale --passages 300 --seconds 1 --clients 1,2 --stores embedded   # a smoke run, under a minute

Corpus: `--passages` synthetic question/answer pairs built by this module from a fixed technical
vocabulary (about 130 concepts, 30 kinds of system, 20 goals, 20 mechanisms, 15 trade-offs, 10
metrics, 8 question and 6 answer templates) with a seeded random generator: the same seed gives the
same corpus on every machine, every pair is distinct, and the words vary enough that BM25 and dense
retrieval both have something to separate. Queries: `--queries` questions about slots of random
passages, worded with other templates than the corpus uses (so none is an exact passage).

Ingestion: the real `pipeline.index.ingest` (IngestionPipeline, the configured embedder, Chroma,
nodes.json, BM25) into a temporary index folder per store: `embedded` is the PersistentClient under
the folder, `server` is `chroma run` on 127.0.0.1 and a free port (started here, stopped at the end,
also on errors and Ctrl-C). The passages are embedded once: the second store's ingestion goes
through the same code path and stores, with an embedder that hands back the vectors the first one
computed for the same texts (MiniLM embedded ~42 passages/s on 2 CPU cores shared with another job).

Queries, per store and per client count (`--clients`): that many threads, each a client that sends
queries back to back for `--seconds`: `build_retriever(config, "hybrid", rerank.candidates)` (dense
+ BM25 fusion, the query embedded by the configured embedder), then `CrossEncoderReranker` keeps
`rerank.top_n`: the retrieval + rerank path of the `full` system. The reranker's logit cache is off
(cache_size=0), so every query pays for its scoring. Reported per row: queries completed, throughput
(queries/s over the wall time of the level), latency p50/p95 (ms), errors (exceptions and empty
results; the first few are printed; must be 0), and the peak resident memory (MiB) of this process
sampled during the level (it holds the models and the embedded store), and for the server store
the Chroma server's own peak. One warm-up query per store is not timed. Loopback only, nothing is
downloaded, and each level is bounded by --seconds (plus the queries in flight at its end).
The reranker is `rerank.model` when it exists, else the base encoder with a fresh one-logit head
(same architecture, same cost).

Duration of the default run on 2 CPU cores (estimated from runs at 5k and 20k passages): ~40 min
embedding 100k passages; per store ~3 min of Chroma inserts and ~12 min rewriting nodes.json and
docstore.json at each of the ~200 checkpoints (`index.checkpoint_every` 512: each checkpoint
rewrites the whole files, so the cost grows with the square of the corpus; `--set
index.checkpoint_every=10000` cuts it to ~1 min, with coarser resume points); ~7 min of queries:
~80 min in all, and ~4 GB of memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from eval.bench_retrieval import peak_rss_mb, percentile
from pipeline.chroma_server import ChromaServer
from pipeline.cli import add_io_arguments
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, config_from_dict, save_resolved_config
from pipeline.errors import run_cli
from pipeline.fileio import write_json, write_jsonl
from pipeline.models import ModelNotFoundError, check_model_source, resolve_model

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

DEFAULT_PASSAGES = 100_000
DEFAULT_SECONDS = 60.0
DEFAULT_CLIENTS = (1, 4, 8)
STORES = ("embedded", "server")
MAX_ERRORS_SHOWN = 5

# --------------------------------------------------------------------------------------------
# synthetic corpus
# --------------------------------------------------------------------------------------------

CONCEPTS = (
    "B-tree", "hash table", "Bloom filter", "skip list", "trie", "red-black tree", "LSM tree", "consistent hashing",
    "write-ahead log", "two-phase commit", "Raft consensus", "Paxos", "vector clock", "CRDT", "gossip protocol",
    "leader election", "load balancer", "reverse proxy", "rate limiter", "circuit breaker", "message queue",
    "publish/subscribe", "event sourcing", "CQRS", "sharding", "replication", "snapshot isolation", "MVCC",
    "optimistic locking", "deadlock detection", "garbage collector", "reference counting", "JIT compiler",
    "bytecode interpreter", "virtual memory", "page cache", "TLB", "copy-on-write", "memory-mapped file", "epoll",
    "io_uring", "thread pool", "coroutine", "actor model", "mutex", "semaphore", "spinlock", "lock-free queue",
    "memory barrier", "cache coherence", "branch predictor", "SIMD instruction", "GPU kernel", "tensor core",
    "gradient descent", "backpropagation", "dropout", "batch normalization", "attention mechanism", "transformer",
    "word embedding", "subword tokenizer", "beam search", "LoRA adapter", "weight quantization", "knowledge distillation",
    "convolution", "recurrent network", "random forest", "gradient boosting", "k-means clustering",
    "principal component analysis", "cross-validation", "L2 regularization", "TCP congestion control", "TLS handshake",
    "DNS resolver", "BGP routing", "HTTP/2 multiplexing", "QUIC", "WebSocket", "content delivery network", "OAuth",
    "JSON Web Token", "public key infrastructure", "cryptographic hash", "AES encryption", "elliptic-curve signature",
    "zero-knowledge proof", "container runtime", "Kubernetes scheduler", "service mesh", "blue-green deployment",
    "canary release", "feature flag", "continuous integration", "infrastructure as code", "distributed tracing",
    "log aggregation", "query planner", "inverted index", "columnar storage", "compression codec", "hash join",
    "materialized view", "stream processor", "event-time watermark", "exactly-once delivery", "backpressure",
    "idempotency key", "schema migration", "object-relational mapper", "REST API", "GraphQL", "gRPC",
    "protocol buffers", "finite state machine", "regular expression engine", "parser generator", "static type checker",
    "linker", "dynamic programming", "Dijkstra's algorithm", "A* search", "topological sort", "union-find",
    "binary search", "quicksort", "merge sort", "binary heap",
)  # fmt: skip
SYSTEMS = (
    "a key-value store", "a relational database", "a search engine", "a web server", "an operating system kernel",
    "a mobile app", "a payment system", "a recommendation service", "a compiler", "a game engine", "a data warehouse",
    "a video streaming platform", "an IoT gateway", "a microservice architecture", "a machine learning pipeline",
    "a web browser", "a file system", "a network router", "an embedded controller", "a chat service",
    "a trading platform", "a build system", "a cloud object store", "a time-series database", "an ad exchange",
    "a social network feed", "a robotics stack", "a genomics pipeline", "a video transcoder", "an edge cache",
)  # fmt: skip
GOALS = (
    "reduce tail latency", "raise throughput", "bound memory use", "survive node failures", "keep replicas consistent",
    "avoid lock contention", "speed up lookups", "limit write amplification", "recover after a crash",
    "scale out horizontally", "isolate tenants", "detect anomalies early", "cut network round trips", "save energy",
    "protect user data", "simplify debugging", "shorten build times", "keep results reproducible",
    "absorb traffic spikes", "lower storage cost",
)  # fmt: skip
MECHANISMS = (
    "batching requests", "caching hot entries", "partitioning by key", "sorting runs in memory", "hashing keys into buckets",
    "checksumming every block", "replicating the log", "compacting old segments", "prefetching pages", "pinning threads to cores",
    "throttling noisy clients", "retrying with exponential backoff", "versioning each record", "pruning candidates early",
    "sampling a fraction of traffic", "indexing the filtered columns", "streaming partial results", "pooling connections",
    "spreading writes across shards", "vectorizing the inner loop",
)  # fmt: skip
TRADEOFFS = (
    "higher memory use", "extra write latency", "a more complex recovery path", "occasionally stale reads", "CPU overhead",
    "a larger disk footprint", "more operational work", "weaker ordering guarantees", "slower cold starts",
    "more network traffic", "harder capacity planning", "longer compile times", "less predictable pauses",
    "more configuration to tune", "coarser failure isolation",
)  # fmt: skip
METRICS = (
    "p99 latency", "requests per second", "cache hit ratio", "disk IOPS", "heap size", "error rate", "replication lag",
    "recall at 10", "queue depth", "CPU utilisation",
)  # fmt: skip
QUESTION_TEMPLATES = (
    "How does {concept} help {system} {goal}?",
    "Why would {system} use {concept}?",
    "What is the role of {concept} in {system}?",
    "When should {system} rely on {concept} to {goal}?",
    "Explain how {concept} works inside {system}.",
    "What are the trade-offs of {concept} in {system}?",
    "Which problem does {concept} solve for {system}?",
    "Describe how {system} can {goal} with {concept}.",
)
ANSWER_TEMPLATES = (
    "{Concept} lets {system} {goal} by {mechanism}. The price is {tradeoff}, so operators watch {metric}.",
    "In {system}, {concept} works by {mechanism}, which helps {goal_ing}; expect {tradeoff} and track {metric}.",
    "{Concept} is used to {goal}: it relies on {mechanism}. Its main cost is {tradeoff}, visible in {metric}.",
    "By {mechanism}, {concept} allows {system} to {goal}. Teams accept {tradeoff} and alert on {metric}.",
    "{system_cap} adopts {concept} to {goal}. The technique boils down to {mechanism}, at the cost of {tradeoff}; {metric} shows whether it pays off.",
    "Use {concept} when {system} must {goal}. It depends on {mechanism} and brings {tradeoff}; measure {metric} before and after.",
)
QUERY_TEMPLATES = (
    "{system}: how can {concept} {goal}?",
    "using {concept} to {goal} in {system}",
    "what does {concept} cost {system}?",
    "{concept} for {system}, what to monitor?",
    "can {concept} {goal}?",
)


def _ing(goal: str) -> str:
    """'save energy' -> 'saving energy' (enough English for the verbs of GOALS)."""
    verb, _, rest = goal.partition(" ")
    if verb == "cut":
        stem = "cutt"
    else:
        stem = verb[:-1] if verb.endswith("e") and not verb.endswith("ee") else verb
    return f"{stem}ing {rest}".strip()


def _slots(rng: random.Random) -> dict[str, str]:
    concept, system = rng.choice(CONCEPTS), rng.choice(SYSTEMS)
    goal = rng.choice(GOALS)
    return {
        "concept": concept,
        "Concept": concept[0].upper() + concept[1:],
        "system": system,
        "system_cap": system[0].upper() + system[1:],
        "goal": goal,
        "goal_ing": _ing(goal),
        "mechanism": rng.choice(MECHANISMS),
        "tradeoff": rng.choice(TRADEOFFS),
        "metric": rng.choice(METRICS),
    }


def synthetic_records(n: int, seed: int = 42) -> list[dict[str, str]]:
    """`n` distinct question/answer pairs (see the module doc); the same for the same (n, seed),
    and a smaller n gives a prefix of a larger one."""
    if n <= 0:
        raise ConfigError(f"--passages must be > 0; got {n}")
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        slots = _slots(rng)
        question = rng.choice(QUESTION_TEMPLATES).format(**slots)
        answer = rng.choice(ANSWER_TEMPLATES).format(**slots)
        if (question, answer) not in seen:  # ~10^10 combinations: a repeat is rare, but ids must be unique
            seen.add((question, answer))
            out.append({"question": question, "answer": answer})
    return out


def synthetic_queries(n: int, seed: int = 42) -> list[str]:
    """`n` distinct search queries over the corpus vocabulary, worded unlike any passage."""
    if n <= 0:
        raise ConfigError(f"--queries must be > 0; got {n}")
    rng = random.Random(seed + 1)  # another stream than the corpus: queries are not passages
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        query = rng.choice(QUERY_TEMPLATES).format(**_slots(rng))
        if query not in seen:
            seen.add(query)
            out.append(query)
    return out


# --------------------------------------------------------------------------------------------
# embedding once for both stores
# --------------------------------------------------------------------------------------------


def reusing_embedder(inner: "BaseEmbedding") -> "BaseEmbedding":
    """An embedder for ingestion that embeds each distinct text once with `inner` and hands back
    the same vector when the text comes again (the second store's ingestion). Queries go to
    `inner` unchanged. `.embedded` / `.reused` count texts."""
    import numpy as np
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class ReusingEmbedding(BaseEmbedding):
        embedded: int = 0
        reused: int = 0
        _inner: Any = PrivateAttr()
        _vectors: dict = PrivateAttr(default_factory=dict)
        _lock: Any = PrivateAttr(default_factory=threading.Lock)

        @classmethod
        def class_name(cls) -> str:
            return "ReusingEmbedding"

        @staticmethod
        def _key(text: str) -> bytes:
            return hashlib.sha1(text.encode("utf-8")).digest()  # 20 bytes per text, not the text itself

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            keys = [self._key(t) for t in texts]
            with self._lock:
                missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self._vectors))
            if missing:
                vectors = self._inner.get_text_embedding_batch(missing, show_progress=False)
                with self._lock:
                    for text, vector in zip(missing, vectors):
                        self._vectors[self._key(text)] = np.asarray(vector, dtype=np.float32)  # 1.5 KB per 384-d vector
                    self.embedded += len(missing)
            with self._lock:
                self.reused += len(texts) - len(missing)
                return [self._vectors[k].tolist() for k in keys]

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._get_text_embeddings([text])[0]

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._inner.get_query_embedding(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._inner.get_query_embedding(query)

    embed = ReusingEmbedding(embed_batch_size=getattr(inner, "embed_batch_size", 64), model_name=getattr(inner, "model_name", "reusing"))
    embed._inner = inner
    return embed


# --------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------


class MemorySampler:
    """Peak resident memory (MiB) of this process and, optionally, of another one (the Chroma
    server), sampled every `interval` s between `start()` and `stop()`. Without psutil only this
    process's lifetime peak (ru_maxrss) is known and the other one is not measured."""

    def __init__(self, other_pid: int | None = None, interval: float = 0.1):
        self.other_pid, self.interval = other_pid, interval
        self.peak_self = self.peak_other = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil

            self._me = psutil.Process()
            self._other = psutil.Process(other_pid) if other_pid else None
        except ImportError:
            self._me = self._other = None
        self.measures_other = self._other is not None

    def _sample(self) -> None:
        if self._me is None:
            self.peak_self = max(self.peak_self, peak_rss_mb())
            return
        self.peak_self = max(self.peak_self, self._me.memory_info().rss / 2**20)
        if self._other is not None:
            try:
                self.peak_other = max(self.peak_other, self._other.memory_info().rss / 2**20)
            except Exception:  # the server is gone: the level reports its errors anyway
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "MemorySampler":
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


def run_clients(query: Callable[[str], Any], queries: Sequence[str], *, clients: int, seconds: float, server_pid: int | None = None) -> dict[str, Any]:
    """`clients` threads, each sending queries back to back until `seconds` have passed (a query
    in flight then finishes and counts). Client i starts at query i and steps by `clients`, so
    concurrent clients ask different questions. An exception, or an empty result, is an error."""
    if clients <= 0 or seconds <= 0:
        raise ValueError(f"clients and seconds must be > 0; got {clients}, {seconds}")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    counts = [0] * clients
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)
    timing: dict[str, float] = {}

    def client(i: int) -> None:
        barrier.wait()
        k = i
        while time.perf_counter() < timing["deadline"] and not stop.is_set():
            question = queries[k % len(queries)]
            k += clients
            started = time.perf_counter()
            try:
                result = query(question)
                if not result:
                    raise RuntimeError(f"no passage returned for {question!r}")
            except Exception as exc:  # counted and shown: the benchmark must see every failure
                counts[i] += 1
                if len(errors[i]) < MAX_ERRORS_SHOWN:
                    errors[i].append(f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            latencies[i].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    sampler = MemorySampler(server_pid).start()
    try:
        timing["start"] = time.perf_counter()
        timing["deadline"] = timing["start"] + seconds
        barrier.wait()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - timing["start"]
    finally:
        stop.set()  # Ctrl-C while joining: the clients stop after their current query
        sampler.stop()
    done = [x for per_client in latencies for x in per_client]
    shown = [e for per_client in errors for e in per_client][:MAX_ERRORS_SHOWN]
    return {
        "clients": clients,
        "seconds": round(wall, 3),
        "queries": len(done),
        "queries_per_s": round(len(done) / wall, 3) if wall > 0 else 0.0,
        "p50_ms": round(1000 * percentile(done, 50), 2) if done else None,
        "p95_ms": round(1000 * percentile(done, 95), 2) if done else None,
        "mean_ms": round(1000 * sum(done) / len(done), 2) if done else None,
        "errors": sum(counts),
        "error_examples": shown,
        "peak_rss_mib": round(sampler.peak_self, 1),
        "server_peak_rss_mib": round(sampler.peak_other, 1) if server_pid and sampler.measures_other else None,
    }


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def store_config(config: Config, work: Path, store: str, *, port: int | None = None) -> Config:
    """`config` pointed at the bench's data and a fresh index folder of `store`."""
    raw = config.to_dict()
    raw["data"].update({"dir": str(work / "data"), "knowledge_splits": ["train"]})
    raw["index"].update({"dir": str(work / f"index-{store}"), "sources": [], "chroma_host": None})
    if store == "server":
        raw["index"].update({"chroma_host": "127.0.0.1", "chroma_port": port})
    return config_from_dict(raw)


def resolve_bench_model(config: Config) -> tuple[str, str]:
    """(reference, description): the configured cross-encoder if it exists, else the base encoder.
    This benchmark times a cross-encoder: with rerank.kind=query-likelihood, rerank.model is an LM
    adapter, so the cross-encoder is finetune.reranker's output."""
    key, reference = ("rerank.model", config.rerank.model) if config.rerank.kind == "cross-encoder" else ("finetune.reranker.output", config.finetune.reranker.output)
    try:
        return resolve_model(reference, allow_download=False), f"{key} ({reference})"
    except ModelNotFoundError:
        base = config.finetune.reranker.base_model
        return base, f"{base} with a fresh one-logit head ({key} {reference} not found; same architecture, same cost)"


def load_reranker(config: Config) -> tuple[Any, str]:
    """The reranker the benchmark uses (see the module doc) with its cache off, loaded now."""
    from pipeline.encoders import load_cross_encoder
    from rerank.cross_encoder import CrossEncoderReranker

    reference, described = resolve_bench_model(config)
    check_model_source(config, reference, "rerank.model")
    device = "cpu" if config.generator.device == "cpu" else "auto"
    model = load_cross_encoder(reference, device=device, max_length=config.rerank.max_length, num_labels=1, allow_pickle=config.security.allow_pickle_weights)
    settings = {"top_n": config.rerank.top_n, "batch_size": config.rerank.batch_size, "max_length": config.rerank.max_length}
    # cache off: the clients' queries differ, but a repeated one must not be free
    return CrossEncoderReranker.from_model(model, name=reference, cache_size=0, **settings), described


def run_benchmark(
    config: Config,
    *,
    passages: int = DEFAULT_PASSAGES,
    seconds: float = DEFAULT_SECONDS,
    clients: Sequence[int] = DEFAULT_CLIENTS,
    stores: Sequence[str] = STORES,
    queries: int = 2000,
    seed: int = 42,
    work_dir: str | Path | None = None,
    keep: bool = False,
    embed_model: "BaseEmbedding | None" = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the corpus, ingest it into each store, time the clients (see the module doc).
    `embed_model` defaults to the config's embedder (tests pass a fast one). Without `work_dir`
    the work happens in a new temporary folder, deleted at the end unless `keep`; a `work_dir`
    given is the caller's and is never deleted."""
    import torch

    from pipeline.encoders import load_embedder
    from pipeline.index import ingest, open_index
    from pipeline.retrieve import build_retriever

    unknown = [s for s in stores if s not in STORES]
    if not stores or unknown:
        raise ConfigError(f"--stores must list {' and/or '.join(STORES)}; got {','.join(stores) or '(none)'}")
    if not clients or min(clients) <= 0:
        raise ConfigError(f"--clients must be positive integers, e.g. 1,4,8; got {list(clients)}")
    if seconds <= 0:
        raise ConfigError(f"--seconds must be > 0; got {seconds}")
    records = synthetic_records(passages, seed)
    questions = synthetic_queries(queries, seed)
    inner = embed_model or load_embedder(config)  # the models first: a missing one fails before any file is written
    ingest_embed = reusing_embedder(inner)
    reranker, described = load_reranker(config)
    candidates = max(config.rerank.candidates, config.rerank.top_n)
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "settings": {
            "passages": len(records), "queries_pool": len(questions), "seconds": seconds, "clients": list(clients), "stores": list(stores), "seed": seed,
            "embedder": config.index.embed_model if embed_model is None else type(embed_model).__name__, "reranker": described,
            "candidates": candidates, "top_n": config.rerank.top_n, "fusion": config.retrieve.fusion, "checkpoint_every": config.index.checkpoint_every,
        },
        "ingestion": {},
        "rows": [],
    }  # fmt: skip
    owned = work_dir is None  # only a folder made here is deleted afterwards
    work = Path(tempfile.mkdtemp(prefix="ragft-bench-scale-")) if owned else Path(work_dir)
    log(f"corpus: {len(records)} synthetic passages, {len(questions)} queries; work folder {work}")
    server: ChromaServer | None = None
    try:
        write_jsonl(work / "data" / "train.jsonl", records)
        for store in stores:
            port = None
            if store == "server":
                server = ChromaServer(work / "chroma-server").start()
                port = server.port
                log(f"server: chroma run on {server.url} (pid {server.pid})")
            cfg = store_config(config, work, store, port=port)
            before = ingest_embed.embedded
            log(f"{store}: ingesting {len(records)} passages with pipeline.index.ingest")
            started = time.perf_counter()
            report = ingest(cfg, embed_model=ingest_embed, show_progress=show_progress, log=lambda *_: None)
            took = time.perf_counter() - started
            result["ingestion"][store] = {
                "nodes": report.nodes_total, "added": report.nodes_added, "seconds": round(took, 2),
                "nodes_per_s": round(report.nodes_added / took, 1) if report.nodes_added and took > 0 else None,
                "embedded": ingest_embed.embedded - before, "vectors_reused": report.nodes_added - (ingest_embed.embedded - before),
            }  # fmt: skip
            kb = open_index(cfg, embed_model=inner)
            counts = kb.counts()
            if set(counts.values()) != {len(records)}:
                raise RuntimeError(f"{store}: the index holds {counts} nodes after ingesting {len(records)} passages")
            retriever = build_retriever(cfg, "hybrid", candidates, kb=kb)

            def query(question: str, retriever=retriever) -> list:
                hits = retriever.retrieve(question)
                return reranker.postprocess_nodes(hits, query_str=question)

            query(questions[-1])  # warm-up: loads BM25 and the HNSW graph, first-call allocations
            for n in clients:
                log(f"{store}: {n} client(s) for {seconds:g} s")
                row = {"store": store, **run_clients(query, questions, clients=n, seconds=seconds, server_pid=server.pid if server else None)}
                result["rows"].append(row)
                for example in row["error_examples"]:
                    log(f"  error: {example}")
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        if owned and not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["peak_rss_mib_process"] = round(peak_rss_mb(), 1)
    result["errors"] = sum(r["errors"] for r in result["rows"])
    return result


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"Scale benchmark: {s['passages']} synthetic passages; hybrid top-{s['candidates']} + cross-encoder top-{s['top_n']} "
        f"({s['reranker']}); embedder {s['embedder']}; {s['seconds']:g} s per level",
        f"{m['cpus']} CPUs, {m['torch_threads']} torch threads, load average {m['load_avg_1m_at_start']} at start",
        "",
        "| store | passages added | ingestion s | added/s | vectors embedded | vectors reused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for store, ing in result["ingestion"].items():
        rate = "-" if ing["nodes_per_s"] is None else f"{ing['nodes_per_s']:.1f}"
        lines.append(f"| {store} | {ing['added']} | {ing['seconds']:.1f} | {rate} | {ing['embedded']} | {ing['vectors_reused']} |")
    lines += [
        "",
        "| store | clients | queries | q/s | p50 ms | p95 ms | errors | peak RSS MiB | server RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for r in result["rows"]:
        server_rss = "-" if r["server_peak_rss_mib"] is None else f"{r['server_peak_rss_mib']:.0f}"
        lines.append(f"| {r['store']} | {r['clients']} | {r['queries']} | {r['queries_per_s']:.2f} | {ms(r['p50_ms'])} | {ms(r['p95_ms'])} | {r['errors']} | {r['peak_rss_mib']:.0f} | {server_rss} |")
    if result["errors"]:
        lines += ["", f"ERRORS: {result['errors']} (must be 0); first ones:"]
        lines += [f"  {r['store']}/{r['clients']}: {e}" for r in result["rows"] for e in r["error_examples"]]
    return "\n".join(lines)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise ConfigError(f"{flag} must be positive integers separated by commas, e.g. 1,4,8; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench scale",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--passages", type=int, default=DEFAULT_PASSAGES, metavar="N", help=f"Synthetic passages ingested into each store (embedded once for both). Default: {DEFAULT_PASSAGES} (~80 min in all on 2 CPU cores, see below).")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, metavar="S", help=f"Duration of each (store, clients) level. Default: {DEFAULT_SECONDS:g}.")
    parser.add_argument("--clients", default=",".join(map(str, DEFAULT_CLIENTS)), metavar="N,N,...", help="Concurrent client threads of each level. Default: 1,4,8.")
    parser.add_argument("--stores", default=",".join(STORES), metavar="NAME,...", help="embedded (Chroma PersistentClient in this process) and/or server (`chroma run` on 127.0.0.1). Default: embedded,server.")
    parser.add_argument("--queries", type=int, default=2000, metavar="N", help="Distinct synthetic queries the clients cycle through. Default: 2000.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the corpus and the queries. Default: 42.")
    parser.add_argument("--work-dir", metavar="DIR", help="Folder for the data, indexes and server data (kept afterwards; a second run over the same folder finds the indexes built and only times the queries). Default: a new temporary folder, deleted at the end.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary work folder at the end (its path is logged).")
    parser.add_argument("--json", metavar="FILE", help="Also write the JSON result to FILE (atomically), with the resolved config beside it.")
    add_io_arguments(parser, formats="Print a Markdown table (md) or JSON. Default: md.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars or log lines.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        clients = _int_list(args.clients, "--clients")
        stores = list(dict.fromkeys(s.strip() for s in args.stores.split(",") if s.strip()))
        for flag, value in (("--passages", args.passages), ("--seconds", args.seconds), ("--queries", args.queries)):
            if value <= 0:
                raise ConfigError(f"{flag} must be > 0; got {value:g}")
        config = config_from_args(args)
        log = (lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
        result = run_benchmark(
            config, passages=args.passages, seconds=args.seconds, clients=clients, stores=stores, queries=args.queries, seed=args.seed,
            work_dir=args.work_dir, keep=args.keep, show_progress=not args.quiet, log=log,
        )  # fmt: skip
        if args.json:
            write_json(args.json, result)
            save_resolved_config(config, Path(args.json).parent, extra={"kind": "benchmark-scale"})
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))
        if result["errors"]:
            print(f"error: {result['errors']} queries failed (see the table); a scale run must have none", file=sys.stderr)
            return 1
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
