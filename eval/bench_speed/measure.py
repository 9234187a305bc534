"""What `python -m eval.bench speed` measures: its inputs, each section, the run and its headline figures."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from eval.bench_speed.timing import TokenOrderedCrossEncoder, TokenOrderedEmbedder, cross_encoder_speed, embedder_speed, random_head_cross_encoder
from eval.metrics import latency_summary, rouge_l_f1
from eval.retrieval import run_retriever
from pipeline.cli import data_run_dir
from pipeline.config import MINILM, Config, ConfigError, config_from_dict
from pipeline.data import SPLITS, DataError, load_split, open_book_corpus
from pipeline.errors import UserFacingError
from pipeline.index import KnowledgeBase, qa_nodes, qa_text
from pipeline.metrics import DEPTH, paired_mean_test, retrieval_per_query
from pipeline.models import resolve_model

FORMAT = "ragft-bench-speed/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_SPLITS = REPO_ROOT.parent / "shared" / "data" / "seed-technical-qa" / "splits"
BACKENDS = {"torch": "torch", "int8": "onnx-int8", "int8_torch": "torch-int8", "bf16": "torch-bf16"}  # short name -> index.backend / rerank.backend
FAST = ("int8", "int8_torch", "bf16")  # the backends measured against torch fp32; the headline figures are the fastest one's
# torch fp32 fed batches cut in token-count order, as the int8 backends cut theirs: how much of
# their speed-up is batching (a reference figure; the baseline stays plain torch fp32)
TOKEN_ORDER = "torch_token_order"
INT8 = ("int8", "int8_torch")  # the int8 backends: `mrr10_delta` is the headline cross-encoder's when it is one of them
# Sample sizes: --quick finishes in under 5 minutes on 2 shared cores; the full run uses whole splits.
# Both rank every seed val question (270) for the MRR@10 delta: on 100, one question moving one rank
# moves the delta by up to 0.005, the target's whole margin. The full run generates for every val
# question too: on 48 prompts the ROUGE-L delta moved with the passages the prompts carried.
SAMPLES: dict[str, dict[str, int]] = {
    "quick": {"passages": 512, "queries": 20, "prompts": 16, "new_tokens": 48, "questions": 270, "rounds": 2},
    "full": {"passages": 1264, "queries": 50, "prompts": 270, "new_tokens": 100, "questions": 270, "rounds": 3},
}
# The headline figures, flat at the top of the JSON (tests and the README read these).
FIGURES = (
    "ingest_per_s", "ingest_per_s_baseline", "ingest_speedup",
    "rerank_pairs_per_s", "rerank_pairs_per_s_baseline", "rerank_speedup",
    "retrieve_rerank_p50_ms", "retrieve_rerank_backend",
    "generate_tok_s", "generate_tok_s_baseline", "generate_speedup", "generate_identical",
    "first_token_p50_ms",
    "mrr10_delta",
    "ingest_backend", "rerank_backend", "mrr10_delta_bf16",
    "generate_rougeL_delta",
    "mrr10_delta_backend",
)


# figures added after the format was first written: an earlier result renders without them
LATER_FIGURES = ("first_token_p50_ms", "ingest_backend", "rerank_backend", "mrr10_delta_bf16", "generate_rougeL_delta", "mrr10_delta_backend")


class BenchError(UserFacingError, RuntimeError):
    """The benchmark cannot run as asked; the message names the flag or value and the fix."""


# --------------------------------------------------------------------------------------------
# inputs: data, runtime, cross-encoder, the two backend configs
# --------------------------------------------------------------------------------------------


def check_data(data: Path) -> None:
    missing = [f"{split}.jsonl" for split in SPLITS if not (data / f"{split}.jsonl").is_file()]
    if missing:
        raise DataError(
            f"--data {data}: {', '.join(missing)} not found there. Fix: point --data at a folder of prepared splits "
            f"(train/val/test.jsonl), e.g. --data {SEED_SPLITS}, or write one with python -m pipeline.prepare --input RAW --out DIR"
        )


def check_int8_runtime() -> None:
    """The int8 figures need onnxruntime (runs and quantizes the graph) and onnx (the quantizer reads it)."""
    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError(
            f"the int8 figures (index.backend / rerank.backend = onnx-int8) need {' and '.join(missing)}, not installed here. "
            "Fix: pip install 'onnxruntime>=1.17' 'onnx>=1.16' (both are in pyproject.toml's dependencies)"
        )


def _is_cross_encoder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def reranker_sources(config: Config, data: Path, reranker: Optional[str]) -> list[tuple[Path, str]]:
    """Where the cross-encoder may come from, in order (see the module doc); --reranker must exist."""
    if reranker:
        path = Path(reranker).expanduser()
        if not _is_cross_encoder(path):
            raise BenchError(f"--reranker {reranker}: no config.json and *.safetensors there. Fix: point --reranker at a cross-encoder folder (python -m finetune.reranker writes one), or leave it out")
        return [(path, "--reranker")]

    trained = Path(data_run_dir(config.run_dir, data)) / "reranker"
    return [(p, how) for p, how in ((trained, "trained by eval.compare on --data"), (Path(config.rerank.model), "rerank.model")) if _is_cross_encoder(p)]


def copy_reranker(config: Config, data: Path, reranker: Optional[str], work: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """A private copy of the first usable cross-encoder (or MiniLM with a random head) and how it was chosen."""
    target = work / "reranker"
    for source, how in reranker_sources(config, data, reranker):
        try:  # a folder being rewritten right now can vanish under the copy: try the next one
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
        except OSError as exc:
            log(f"reranker: cannot copy {source} ({exc}); trying the next one")
            shutil.rmtree(target, ignore_errors=True)
            continue
        if _is_cross_encoder(target):
            return target, f"{source} ({how})"
        shutil.rmtree(target, ignore_errors=True)
    random_head_cross_encoder(resolve_model(MINILM), target)
    return target, f"{MINILM} with a random one-logit head (no trained cross-encoder found; same architecture, same cost)"


def copy_embedder(config: Config, data: Path, work: Path, log: Callable[[str], None]) -> tuple[Optional[Path], str]:
    """A private copy of the fine-tuned embedder eval.compare trained on `data` when full searches
    its index (index.finetuned_embedder), so that its int8 export lands in the copy; (None, how)
    otherwise: the bench then embeds with index.embed_model."""
    if not config.index.finetuned_embedder:
        return None, f"{config.index.embed_model} (index.embed_model: full searches the base embedder's index)"

    trained = Path(data_run_dir(config.run_dir, data)) / "embedder"
    if not (trained / "modules.json").is_file():
        log(f"embedder: no fine-tuned embedder at {trained} (eval.compare --data {data} builds it); measuring {config.index.embed_model}")
        return None, f"{config.index.embed_model} (no fine-tuned embedder trained on --data yet)"
    target = work / "embedder"
    shutil.copytree(trained, target, ignore=shutil.ignore_patterns(".*"))
    return target, f"{trained} (the fine-tuned embedder full searches, trained by eval.compare on --data)"


def backend_configs(config: Config, reranker: Path, work: Path, embedder: Optional[Path] = None) -> dict[str, Config]:
    """The profile with index.backend and rerank.backend set to each backend, rerank.model at the
    private copy of the cross-encoder (rerank.kind cross-encoder), and index.embed_model at the fine-tuned embedder's copy when there is one (their
    folder trusted: security.model_dirs)."""
    out = {}
    for name, backend in BACKENDS.items():
        raw = config.to_dict()
        raw["index"]["backend"] = raw["rerank"]["backend"] = backend
        # the cross-encoder path is what this benchmark times, whatever reranker the profile ships
        raw["rerank"].update({"model": str(reranker), "kind": "cross-encoder"})
        if embedder is not None:
            raw["index"]["embed_model"] = str(embedder)
        raw["security"]["model_dirs"] = [*raw["security"]["model_dirs"], str(work)]
        out[name] = config_from_dict(raw)
    return out


@dataclass
class Parts:
    """What every section measures, loaded (and exported to int8) before any clock starts."""

    configs: dict[str, Config]  # "torch" / "int8"
    embedders: dict[str, Any]  # the dense index's embedder of each backend (pipeline.encoders.load_embedder)
    cross_encoders: dict[str, Any]  # CrossEncoder / Int8CrossEncoder (pipeline.encoders.load_cross_encoder)
    reranker: str  # where the cross-encoder came from
    embedder: str = ""  # where the embedder came from


def load_parts(config: Config, data: Path, reranker: Optional[str], work: Path, log: Callable[[str], None]) -> Parts:
    from pipeline.encoders import load_cross_encoder, load_embedder

    path, how = copy_reranker(config, data, reranker, work, log)
    log(f"cross-encoder: {how}")
    embedder, embedder_how = copy_embedder(config, data, work, log)
    log(f"embedder: {embedder_how}")
    configs = backend_configs(config, path, work, embedder)
    embedders = {name: load_embedder(cfg) for name, cfg in configs.items()}
    for name in INT8:  # export + quantize (seconds; cached in {run_dir}/int8-cache), and compile (torch-int8)
        embedders[name].load()
    cross_encoders = {
        name: load_cross_encoder(str(path), device="cpu", max_length=cfg.rerank.max_length, backend=cfg.rerank.backend, allow_pickle=cfg.security.allow_pickle_weights, int8_cache_dir=str(work / "int8-cache"))
        for name, cfg in configs.items()
    }
    for name in INT8:
        cross_encoders[name].load()
    return Parts(configs=configs, embedders=embedders, cross_encoders=cross_encoders, reranker=how, embedder=embedder_how)


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def measure_ingest(parts: Parts, train: Sequence[dict[str, str]], *, passages: int, rounds: int) -> dict[str, Any]:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding


    texts = [qa_text(r["question"], r["answer"]) for r in train[:passages]]
    others = {name: parts.embedders[name] for name in FAST if name != "int8"}
    if isinstance(parts.embedders["torch"], HuggingFaceEmbedding):  # the reference counts tokens with its model's tokenizer
        others[TOKEN_ORDER] = TokenOrderedEmbedder(parts.embedders["torch"])
    return embedder_speed(parts.embedders["torch"], parts.embedders["int8"], texts, rounds, others=others)


def faster(detail: Mapping[str, Any], unit: str, names: Sequence[str] = (*FAST, "torch")) -> str:
    """The backend among `names` with the most `unit`/s in a section's detail (the first on a tie;
    a backend the detail has no figure for, as in results written before bf16 was measured, is skipped)."""
    rates = {name: detail[f"{name}_{unit}_per_s"] for name in names if f"{name}_{unit}_per_s" in detail}
    return max(rates, key=rates.get)  # max keeps the first of equals


def build_kb(parts: Parts, backend: str, train: Sequence[dict[str, str]]) -> Any:
    """The in-memory knowledge base of the train pairs (nodes exactly as ingestion makes them)."""
    return KnowledgeBase.from_nodes(parts.configs[backend], qa_nodes(train, split="train"), embed_model=parts.embedders[backend])


def candidate_lists(config: Config, kb: Any, questions: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """Each question with full's retriever's (retrieve.mode) top-`rerank.candidates` hits."""
    from pipeline.retrieve import build_retriever

    retriever = build_retriever(config, config.retrieve.mode, config.rerank.candidates, kb=kb)
    return [(q, retriever.retrieve(q)) for q in questions]


def candidate_pairs(lists: Sequence[tuple[str, list[Any]]]) -> list[list[tuple[str, str]]]:
    """Each question's (question, node text) pairs, the text the reranking postprocessor scores."""
    from llama_index.core.schema import MetadataMode

    return [[(question, hit.node.get_content(metadata_mode=MetadataMode.NONE)) for hit in hits] for question, hits in lists]


def measure_rerank(parts: Parts, lists: Sequence[tuple[str, list[Any]]], *, rounds: int) -> dict[str, Any]:
    pairs = [pair for pairs in candidate_pairs(lists) for pair in pairs]
    config = parts.configs["torch"]
    others = {**{name: parts.cross_encoders[name] for name in FAST if name != "int8"}, TOKEN_ORDER: TokenOrderedCrossEncoder(parts.cross_encoders["torch"])}
    detail = cross_encoder_speed(parts.cross_encoders["torch"], parts.cross_encoders["int8"], pairs, batch_size=config.rerank.batch_size, rounds=rounds, others=others)
    return {**detail, "queries": len(lists), "max_length": config.rerank.max_length}


def measure_one_query(parts: Parts, lists: Sequence[tuple[str, list[Any]]]) -> dict[str, Any]:
    """p50 ms of each backend on one query's work, each stage alone: embedding the question,
    scoring its `rerank.candidates` (question, passage) pairs in one predict call (one warm-up
    each). Batch throughput does not decide latency: onnxruntime embeds one question in ~2 ms
    where the inductor graph, faster on batches, takes ~4 (it runs one row as two)."""
    def p50_ms(call: Callable[[Any], Any], items: Sequence[Any]) -> float:
        call(items[0])  # warm-up
        timings = []
        for item in items:
            started = time.perf_counter()
            call(item)
            timings.append({"call": time.perf_counter() - started})
        return round(1000 * latency_summary(timings)["p50_s"], 2)

    batch_size = parts.configs["torch"].rerank.batch_size
    questions, pair_lists = [question for question, _ in lists], candidate_pairs(lists)
    embed, rerank = {}, {}
    for name in (*FAST, "torch"):
        embed[BACKENDS[name]] = p50_ms(parts.embedders[name].get_query_embedding, questions)
        rerank[BACKENDS[name]] = p50_ms(lambda pairs, scorer=parts.cross_encoders[name]: scorer.predict(pairs, batch_size=batch_size, show_progress_bar=False), pair_lists)
    return {"queries": len(lists), "embed_p50_ms": embed, "rerank_p50_ms": rerank}


def quickest(p50_ms: Mapping[str, float], n: int = 2) -> list[str]:
    """The short backend names (BACKENDS) of the n lowest p50s, quickest first (the first on a tie)."""
    by_backend = {backend: name for name, backend in BACKENDS.items()}
    return [by_backend[backend] for backend in sorted(p50_ms, key=p50_ms.get)[:n]]


def measure_latency(parts: Parts, kb: Any, kb_backend: str, lists: Sequence[tuple[str, list[Any]]], train: Sequence[dict[str, str]], questions: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(one_query, retrieve_rerank): retrieve + rerank timed with the pair of backends that is
    quickest end to end. The two quickest embedders and cross-encoders on one query alone
    (measure_one_query) are tried in every pairing over the questions once (`pair_p50_ms`), and the
    quickest pair is timed again for the figure, so it is not the luckiest of four draws. Pairs
    are tried because stages alone do not add up: a runtime's threads still busy after its call
    slow the next stage on another runtime (at 41b70d7: onnx-int8 embeds a question in 1.85 ms
    alone, yet retrieval took 10.1 ms p50 after torch-int8 reranking). Each embedder searches an
    index it embedded, as one index.backend does both."""
    one_query = measure_one_query(parts, lists)
    embedders, scorers = quickest(one_query["embed_p50_ms"]), quickest(one_query["rerank_p50_ms"])
    kbs = {kb_backend: kb}
    try:
        for name in embedders:
            if name not in kbs:
                kbs[name] = build_kb(parts, name, train)
        trials = {(e, r): measure_retrieve_rerank(parts, kbs[e], e, r, questions)["p50_ms"] for e in embedders for r in scorers}
        embed_backend, rerank_backend = min(trials, key=trials.get)
        one_query["pair_p50_ms"] = {f"{BACKENDS[e]} + {BACKENDS[r]}": round(ms, 2) for (e, r), ms in trials.items()}
        return one_query, measure_retrieve_rerank(parts, kbs[embed_backend], embed_backend, rerank_backend, questions)
    finally:
        for other in kbs.values():
            if other is not kb:
                other.close()


def measure_retrieve_rerank(parts: Parts, kb: Any, embed_backend: str, rerank_backend: str, questions: Sequence[str]) -> dict[str, Any]:
    """Per-question latency of retrieval (retrieve.mode) + reranking (eval.metrics.latency_summary), one
    warm-up query first."""
    from pipeline.retrieve import build_retriever
    from rerank.cross_encoder import CrossEncoderReranker

    config = parts.configs[rerank_backend]
    retriever = build_retriever(parts.configs[embed_backend], config.retrieve.mode, config.rerank.candidates, kb=kb)
    reranker = CrossEncoderReranker.from_model(
        parts.cross_encoders[rerank_backend], name=config.rerank.model, backend=config.rerank.backend,
        top_n=config.rerank.top_n, batch_size=config.rerank.batch_size, max_length=config.rerank.max_length,
        retrieval_weight=config.rerank.retrieval_weight, cache_size=0,  # no logit cache: every query is scored
    )
    timings = []
    for i, question in enumerate([questions[0], *questions]):
        started = time.perf_counter()
        hits = retriever.retrieve(question)
        retrieved = time.perf_counter()
        reranker.postprocess_nodes(hits, query_str=question)
        if i:  # the first is the warm-up
            timings.append({"retrieve": retrieved - started, "rerank": time.perf_counter() - retrieved})
    summary = latency_summary(timings)
    return {
        "queries": len(timings), "candidates": config.rerank.candidates, "retriever": config.retrieve.mode,
        "embed_backend": BACKENDS[embed_backend], "rerank_backend": BACKENDS[rerank_backend],
        "p50_ms": 1000 * summary["p50_s"], "p90_ms": 1000 * summary["p90_s"],
        "retrieve_p50_ms": 1000 * summary["stages"]["retrieve"]["p50_s"], "rerank_p50_ms": 1000 * summary["stages"]["rerank"]["p50_s"],
    }


def plain_generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int, repetition_penalty: float) -> list[str]:
    """transformers' `model.generate` as a script calls it: prompts in the given order, left-padded
    batches, greedy; each answer ends at the first end-of-sequence or pad token."""
    import torch

    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    answers = []
    for start in range(0, len(prompts), batch_size):
        # add_special_tokens=False: the chat template already holds them (as LocalCausalLM encodes)
        encoded = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            end = next((i for i, token in enumerate(row) if token in stops), len(row))
            answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return answers


FIRST_TOKEN_PROMPTS = 5


def first_token_latency(llm: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """How long the chat UI waits between the end of retrieval and the first streamed words: the
    seconds from `stream_complete` (what a streaming query engine calls) to its first non-empty
    delta, per prompt, at batch 1."""
    import statistics

    waits = []
    for prompt in prompts:
        started = time.perf_counter()
        stream = llm.stream_complete(prompt, formatted=True, max_new_tokens=16)
        for chunk in stream:
            if chunk.delta:
                waits.append(time.perf_counter() - started)
                break
        for _ in stream:  # let the generation thread finish before the next prompt is timed
            pass
    return {"prompts": len(waits), "p50_ms": 1000 * statistics.median(waits) if waits else float("nan"), "max_ms": 1000 * max(waits) if waits else float("nan")}


def generation_rows(
    runs: Mapping[str, tuple[Sequence[str], float]],
    count_tokens: Callable[[Sequence[str]], int],
    references: Optional[Sequence[str]] = None,
    *,
    samples: int = 1000,
    seed: int = 42,
) -> dict[str, Any]:
    """Seconds, tokens and tokens/s of each run (`name -> (answers, seconds)`), how many greedy
    answers of the "project" run are identical to the "baseline" run's and, given the questions'
    `references`, each run's mean ROUGE-L against them with the paired bootstrap of project -
    baseline: greedy answers of a faster path differ in a word here and there, so what counts is
    whether they are as good, not whether they are the same."""
    import numpy as np

    rows: dict[str, Any] = {}
    for name, (texts, seconds) in runs.items():
        tokens = count_tokens(texts)
        rows[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
    project, baseline = runs["project"][0], runs["baseline"][0]
    same = sum(a == b for a, b in zip(project, baseline))
    rows.update(identical=same, identical_share=same / len(project))
    if references is not None:
        a, b = rouge_l_f1(project, references), rouge_l_f1(baseline, references)
        test = paired_mean_test(a, b, samples=samples, seed=seed)
        rows["rougeL"] = {"project": float(np.mean(a)), "baseline": float(np.mean(b)), "delta": test["diff"], "delta_ci95": [test["ci95_low"], test["ci95_high"]], "delta_p_value": test["p_value"]}
    return rows


def build_prompts(config: Config, llm: Any, questions: Sequence[str], *, kb: Any) -> list[str]:
    """The answer prompts of `questions`, each with its dense top-`generator.context_top_k` passages from `kb`."""
    from pipeline.generate import answer_messages, render_prompt
    from pipeline.retrieve import build_retriever

    retriever = build_retriever(config, mode="dense", top_k=config.generator.context_top_k, kb=kb)
    passages = [[hit.node.get_content() for hit in retriever.retrieve(q)] for q in questions]
    return [render_prompt(answer_messages(q, p, max_passage_chars=config.generator.max_passage_chars), llm.tokenizer) for q, p in zip(questions, passages)]


def measure_generate(parts: Parts, kb: Any, embed_backend: str, questions: Sequence[str], *, new_tokens: int, log: Callable[[str], None], references: Optional[Sequence[str]] = None) -> dict[str, Any]:
    from pipeline.models import load_causal_lm, load_llm

    config = parts.configs[embed_backend]
    gen = config.generator
    if gen.backend != "hf":
        raise ConfigError(f"the generation figures time a local model; generator.backend={gen.backend!r}. Fix: --set generator.backend=hf")
    llm = load_llm(config, adapter=None, verbose=False)
    prompts = build_prompts(config, llm, questions, kb=kb)
    model, tokenizer = load_causal_lm(gen.model, device=gen.device, torch_dtype="float32", trust_remote_code=gen.trust_remote_code, allow_pickle=config.security.allow_pickle_weights, convert_dir=gen.convert_dir)
    # warm-up of both (first-call allocations); other settings than the timed runs: nothing memoized
    llm.generate_batch(prompts[:2], max_new_tokens=2, batch_size=2, show_progress=False)
    plain_generate(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=2, repetition_penalty=gen.repetition_penalty)
    runs = {}
    log(f"generate: {len(prompts)} prompts x {new_tokens} new tokens, LocalCausalLM {gen.torch_dtype}, batch {gen.batch_size}")
    started = time.perf_counter()
    runs["project"] = (llm.generate_batch(prompts, max_new_tokens=new_tokens, batch_size=gen.batch_size, show_progress=False), time.perf_counter() - started)
    log("generate: the same prompts through plain model.generate in float32")
    started = time.perf_counter()
    runs["baseline"] = (plain_generate(model, tokenizer, prompts, batch_size=gen.batch_size, max_new_tokens=new_tokens, repetition_penalty=gen.repetition_penalty), time.perf_counter() - started)
    rows = generation_rows(
        runs, lambda texts: sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]),
        references, samples=config.eval.bootstrap_samples, seed=config.eval.seed,
    )
    rows["project"]["dtype"], rows["baseline"]["dtype"] = gen.torch_dtype, "float32"
    rows["first_token"] = first_token_latency(llm, prompts[:FIRST_TOKEN_PROMPTS])
    prompt_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return {
        "model": gen.model, "prompts": len(prompts), "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
        "context_top_k": gen.context_top_k, "batch_size": gen.batch_size, "max_new_tokens": new_tokens,
        "repetition_penalty": gen.repetition_penalty, **rows,
    }


def measure_quality(parts: Parts, data: Path, picked: Sequence[int], *, log: Callable[[str], None]) -> dict[str, Any]:
    """Open-book MRR@10 of full's first stage (retrieve.mode) alone and reranked, with each backend's embedder and cross-encoder
    (rerank.evaluate.evaluate_variants, eval.metrics), and the paired bootstrap of int8 - fp32."""
    import numpy as np

    from pipeline.retrieve import build_retriever
    from rerank.evaluate import evaluate_variants

    mode = parts.configs["torch"].retrieve.mode  # full's first stage

    nodes, questions, relevant = open_book_corpus(data)
    asked, gold = [questions["val"][i] for i in picked], [relevant["val"][i] for i in picked]
    mrr: dict[str, dict[str, list[float]]] = {}
    for name, config in parts.configs.items():
        log(f"quality: {BACKENDS[name]}: embedding {len(nodes)} passages, ranking {len(asked)} val questions")
        kb = KnowledgeBase.from_nodes(config, nodes, embed_model=parts.embedders[name])
        try:
            ranked = evaluate_variants(config, nodes, asked, [f"{mode}+rerank"], kb=kb, depth=DEPTH, show_progress=False)
            ranked[mode] = [[h.node.node_id for h in hits] for hits in run_retriever(build_retriever(config, mode, DEPTH, kb=kb), asked, show_progress=False)[0]]
        finally:
            kb.close()
        mrr[name] = {variant: retrieval_per_query(lists, gold)["mrr@10"] for variant, lists in ranked.items()}
    config = parts.configs["torch"]
    tests = {name: paired_mean_test(mrr[name][f"{mode}+rerank"], mrr["torch"][f"{mode}+rerank"], samples=config.eval.bootstrap_samples, seed=config.eval.seed) for name in FAST}
    test, bf16, inductor = tests["int8"], tests["bf16"], tests["int8_torch"]
    return {
        "protocol": "open-book", "retriever": mode, "questions": len(asked), "corpus": len(nodes), "candidates": config.rerank.candidates,
        "mrr@10": {BACKENDS[name]: {variant: float(np.mean(v)) for variant, v in rows.items()} for name, rows in mrr.items()},
        "mrr10_delta": test["diff"], "delta_ci95": [test["ci95_low"], test["ci95_high"]], "delta_p_value": test["p_value"],
        "mrr10_delta_bf16": bf16["diff"], "delta_bf16_ci95": [bf16["ci95_low"], bf16["ci95_high"]],
        "mrr10_delta_int8_torch": inductor["diff"], "delta_int8_torch_ci95": [inductor["ci95_low"], inductor["ci95_high"]],
    }


def compare_timings(out: Path, wall_s: float) -> dict[str, Any]:
    """Build steps' and systems' seconds from what eval.compare wrote to `out`."""
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    build = {step["artifact"]: {"action": step["action"], "seconds": step["seconds"]} for step in metrics.get("plan", [])}
    systems = {}
    for marker in sorted((out / "predictions").glob("*.done.json")):
        done = json.loads(marker.read_text(encoding="utf-8"))
        latency = metrics.get("systems", {}).get(done["system"], {}).get("latency") or {}
        systems[done["system"]] = {"seconds": done["seconds"], "questions": done["n"], "p50_s": latency.get("p50_s")}
    return {
        "wall_s": wall_s, "profile": metrics.get("profile"), "data": metrics.get("data", {}).get("dir"), "split": metrics.get("data", {}).get("split"),
        "build": build, "build_s": sum(s["seconds"] or 0.0 for s in build.values()),
        "systems": systems, "systems_s": sum(s["seconds"] for s in systems.values()),
    }


def measure_compare(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """`python -m eval.compare` with this command's --config/--set on the profile's own (demo)
    data, in a fresh temporary run_dir (so everything is built), its log on stderr."""
    with tempfile.TemporaryDirectory(prefix="ragft-bench-compare-") as run_dir:
        out = Path(run_dir) / "compare"
        command = [sys.executable, "-m", "eval.compare", "--no-progress", "--out", str(out), *(["--config", args.config] if args.config else [])]
        for override in [*args.overrides, f"run_dir={run_dir}"]:
            command += ["--set", override]
        wall = _run_timed("compare", command, "Fix what it names, or leave it out with --no-compare", log)
        return {**compare_timings(out, wall), "command": shlex.join(command)}


def measure_install(log: Callable[[str], None]) -> dict[str, Any]:
    """`make install` (the Makefile's venv + packages) into a fresh temporary venv, timed: what a
    fresh clone's `make run` does before eval.compare. Its log on stderr."""
    make = shutil.which("make")
    if make is None or not (REPO_ROOT / "Makefile").is_file():
        raise BenchError(f"--time-install runs `make install`, which needs `make` on PATH (found: {make}) and {REPO_ROOT / 'Makefile'}. Fix: install make, or leave --time-install out")
    with tempfile.TemporaryDirectory(prefix="ragft-bench-install-") as tmp:
        command = [make, "--no-print-directory", "install", f"VENV={Path(tmp) / 'venv'}"]
        wall = _run_timed("install", command, "Fix what it names (the package registries must be reachable), or leave --time-install out", log)
    return {"wall_s": round(wall, 1), "command": shlex.join(command)}


def _run_timed(name: str, command: Sequence[str], fix: str, log: Callable[[str], None]) -> float:
    """Run `command` in the repository with its output on stderr; its wall seconds, or a BenchError
    with `fix` when it fails."""
    log(f"{name}: {shlex.join(command)}")
    started = time.perf_counter()
    code = subprocess.run(command, cwd=REPO_ROOT, stdout=sys.__stderr__, stderr=sys.__stderr__).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise BenchError(f"{name}: `{shlex.join(command[:3])} ...` exited with {code} after {wall:.0f} s (its log is above). {fix}. Command: {shlex.join(command)}")
    return wall


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 3) if b else None


def figures(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures (FIGURES) from the sections' details; each ratio from the two
    figures it divides, as reported."""
    ingest, rerank, latency, gen, quality = (detail[k] for k in ("ingest", "rerank", "retrieve_rerank", "generate", "quality"))
    ingest_fast, rerank_fast = faster(ingest, "texts", FAST), faster(rerank, "pairs", FAST)
    # the int8 backend whose cross-encoder is the headline (onnx-int8 when bf16 is, or in results
    # written before torch-int8 was measured)
    delta_from = rerank_fast if rerank_fast in INT8 and f"mrr10_delta_{rerank_fast}" in quality else "int8"
    out = {
        "ingest_per_s": round(ingest[f"{ingest_fast}_texts_per_s"], 2), "ingest_per_s_baseline": round(ingest["torch_texts_per_s"], 2),
        "rerank_pairs_per_s": round(rerank[f"{rerank_fast}_pairs_per_s"], 2), "rerank_pairs_per_s_baseline": round(rerank["torch_pairs_per_s"], 2),
        "ingest_backend": BACKENDS[ingest_fast], "rerank_backend": BACKENDS[rerank_fast],
        "mrr10_delta_bf16": round(quality["mrr10_delta_bf16"], 4) if "mrr10_delta_bf16" in quality else None,
        "retrieve_rerank_p50_ms": round(latency["p50_ms"], 2), "retrieve_rerank_backend": latency["rerank_backend"],
        "generate_tok_s": round(gen["project"]["tokens_per_s"], 2), "generate_tok_s_baseline": round(gen["baseline"]["tokens_per_s"], 2),
        "generate_identical": round(gen["identical_share"], 4),
        "first_token_p50_ms": round(gen["first_token"]["p50_ms"], 1) if "first_token" in gen else None,
        "mrr10_delta_backend": BACKENDS[delta_from],
        "mrr10_delta": round(quality["mrr10_delta" if delta_from == "int8" else f"mrr10_delta_{delta_from}"], 4),
        "generate_rougeL_delta": round(gen["rougeL"]["delta"], 4) if "rougeL" in gen else None,
    }
    out["ingest_speedup"] = ratio(out["ingest_per_s"], out["ingest_per_s_baseline"])
    out["rerank_speedup"] = ratio(out["rerank_pairs_per_s"], out["rerank_pairs_per_s_baseline"])
    out["generate_speedup"] = ratio(out["generate_tok_s"], out["generate_tok_s_baseline"])
    return {key: out[key] for key in FIGURES}


def git_revision() -> dict[str, Any]:
    def git(*argv: str) -> Optional[str]:
        try:
            return subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_revision": git("rev-parse", "--short", "HEAD"), "git_dirty": bool(status) if status is not None else None}


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__, "load_avg_1m_start": round(os.getloadavg()[0], 2)}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def resolve_samples(args: argparse.Namespace) -> dict[str, int]:
    samples = dict(SAMPLES["quick" if args.quick else "full"])
    for name in samples:
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                raise BenchError(f"--{name.replace('_', '-')} must be > 0; got {value}")
            samples[name] = value
    return samples


@contextlib.contextmanager
def _section(seconds: dict[str, float], name: str, log: Callable[[str], None]) -> Iterator[None]:
    log(f"== {name}")
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 1)
    log(f"== {name}: {seconds[name]:.1f} s")


def run(args: argparse.Namespace, config: Config, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    data = Path(args.data).expanduser()
    check_data(data)
    check_int8_runtime()
    samples = resolve_samples(args)
    train, val = load_split(data, "train"), load_split(data, "val")
    if not train or not val:
        raise DataError(f"--data {data}: train ({len(train)} pairs) and val ({len(val)} questions) must both be non-empty")
    # one fixed sample of val (eval.seed): the first N of it serve every section that asks questions
    picked = random.Random(config.eval.seed).sample(range(len(val)), len(val))
    questions = [val[i]["question"] for i in picked]
    references = [val[i]["answer"] for i in picked]
    samples.update(passages=min(samples["passages"], len(train)), questions=min(samples["questions"], len(val)), queries=min(samples["queries"], len(val)), prompts=min(samples["prompts"], len(val)))
    result: dict[str, Any] = {"format": FORMAT, "mode": "quick" if args.quick else "full", "command": args.command, **git_revision(), "machine": machine(), "data": str(data)}
    seconds: dict[str, float] = {}
    detail: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ragft-bench-speed-") as work:
        with _section(seconds, "setup", log):
            parts = load_parts(config, data, args.reranker, Path(work), log)
        with _section(seconds, "ingest", log):
            detail["ingest"] = {**measure_ingest(parts, train, passages=samples["passages"], rounds=samples["rounds"]), "model": parts.embedder}
        embed_backend = faster(detail["ingest"], "texts")
        with _section(seconds, "index", log):
            kb = build_kb(parts, embed_backend, train)
        try:
            with _section(seconds, "rerank", log):
                lists = candidate_lists(parts.configs[embed_backend], kb, questions[: samples["queries"]])
                detail["rerank"] = {**measure_rerank(parts, lists, rounds=samples["rounds"]), "model": parts.reranker}
            with _section(seconds, "retrieve_rerank", log):
                detail["one_query"], detail["retrieve_rerank"] = measure_latency(parts, kb, embed_backend, lists, train, questions[: samples["queries"]])
            with _section(seconds, "generate", log):
                detail["generate"] = measure_generate(parts, kb, embed_backend, questions[: samples["prompts"]], new_tokens=samples["new_tokens"], log=log, references=references[: samples["prompts"]])
        finally:
            kb.close()
        with _section(seconds, "quality", log):
            detail["quality"] = measure_quality(parts, data, picked[: samples["questions"]], log=log)
    detail["install"] = None
    if args.time_install and not args.quick:
        with _section(seconds, "install", log):
            detail["install"] = measure_install(log)
    detail["compare"] = None
    if not args.quick and not args.no_compare:
        with _section(seconds, "compare", log):
            detail["compare"] = measure_compare(args, log)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    samples.update(candidates=config.rerank.candidates, kb_passages=len(train), corpus_passages=detail["quality"]["corpus"])
    result.update(samples=samples, seconds=seconds, **figures(detail), detail=detail)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result
