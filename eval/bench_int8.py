"""int8 ONNX vs torch fp32: embedder and cross-encoder speed, agreement and retrieval quality.

    python -m eval.bench int8                                  # seed splits in ../shared, all cores
    python -m eval.bench int8 --threads 2 --passages 500 --pairs 400 --questions 100
    python -m eval.bench int8 --reranker runs/smollm2/reranker --format json --out runs/bench/int8.json

What it measures (pipeline/int8.py is the int8 path; every timing is best-of `--rounds`, torch and
int8 interleaved, so a neighbour's load hits both alike):

- embedder (`index.embed_model`, torch = the `HuggingFaceEmbedding` that `load_embedder` returns):
  texts/s on `--passages` "Question: ...\\nAnswer: ..." texts of the train split, batch 64;
  cos(fp32, int8) of the same texts;
- cross-encoder (`--reranker`, default: the embedder's encoder with a random one-logit head, built
  in a temporary folder: same architecture, so the same cost): pairs/s on `--pairs` (question,
  passage) pairs at `--max-length`, batch 32; per-query latency p50 for 20 candidates at batch 20
  (19 random answers and the question's own); Spearman of the logits, top-1 agreement, and how
  often each backend ranks the question's own answer first (meaningful for a trained reranker);
- retrieval quality, open book: `--questions` val questions against the knowledge base train + val,
  MRR@10 and hit@1 of plain cosine search with fp32 and int8 vectors (corpus and queries alike),
  and of an fp32 corpus searched with int8 query vectors (an index built with one backend queried
  with the other). Open book is easy (the question's own text is in its passage: MRR ~1.0), so the
  same is done with a corpus of the answers alone ("answers only"), where the two can differ.

`--parts` runs a subset (embedder, retrieval, cross-encoder), to keep each run short on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from pipeline.config import MINILM
from pipeline.data import DataError
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text

PARTS = ("embedder", "retrieval", "cross-encoder")
SEED_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-technical-qa" / "splits"


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def interleaved_rates(works: Mapping[str, Callable[[], Any]], items: int, rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Best items/s of each work over `rounds` rounds that run every work once in turn (a
    neighbour's load hits all alike), and what each work returned in its last round (after the
    caller's warm-up)."""
    rates: dict[str, float] = {name: 0.0 for name in works}
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for name, work in works.items():
            started = time.perf_counter()
            outputs[name] = work()
            rates[name] = max(rates[name], items / (time.perf_counter() - started))
    return rates, outputs


class TokenOrderedEmbedder:
    """A torch embedder (HuggingFaceEmbedding) handed its texts in token-count order, the order
    the int8 path cuts its batches in (sentence-transformers orders by characters): the speed
    benchmarks time it beside the plain one, so that an int8 speed-up is not read as int8's alone
    when part of it is the batching."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.embed_batch_size = embedder.embed_batch_size

    def get_text_embedding_batch(self, texts: Sequence[str], **kwargs: Any) -> list[list[float]]:
        from pipeline.int8 import in_given_order, longest_first

        model = self.embedder._model  # the SentenceTransformer inside HuggingFaceEmbedding
        order = longest_first([len(ids) for ids in model.tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)["input_ids"]])
        return in_given_order(order, self.embedder.get_text_embedding_batch([texts[i] for i in order], **kwargs))


class TokenOrderedCrossEncoder:
    """A sentence-transformers CrossEncoder fed batches cut in token-count order (see
    TokenOrderedEmbedder); one-label models, as ragft's rerankers are."""

    def __init__(self, cross_encoder: Any):
        self.cross_encoder = cross_encoder

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, **kwargs: Any) -> Any:
        import numpy as np

        from pipeline.int8 import longest_first

        pairs = list(pairs)
        encoded = self.cross_encoder.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=self.cross_encoder.max_length)
        order = longest_first([len(ids) for ids in encoded["input_ids"]])
        scores = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores[chunk] = self.cross_encoder.predict([pairs[i] for i in chunk], batch_size=batch_size, **kwargs)
        return scores


def mrr_hit(corpus: "Any", queries: "Any", gold: Sequence[int], k: int = 10) -> dict[str, float]:
    """MRR@k and hit@1 of cosine search (unit vectors: dot products) for queries whose answer is
    corpus row gold[i]."""
    import numpy as np

    scores = queries @ corpus.T
    top = np.argsort(-scores, axis=1)[:, :k]
    ranks = [int(np.where(row == g)[0][0]) + 1 if g in row else None for row, g in zip(top, gold)]
    return {f"mrr@{k}": float(np.mean([1.0 / r if r else 0.0 for r in ranks])), "hit@1": float(np.mean([r == 1 for r in ranks]))}


def spearman(a: "Any", b: "Any") -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def random_head_cross_encoder(encoder: str, out: Path) -> Path:
    """`encoder` with a fresh one-logit head (seed 0), saved as a cross-encoder folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=1)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(out)
    return out


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from pipeline.int8 import Int8Embedding
    from pipeline.models import resolve_model

    splits = Path(args.data_dir)
    missing = [name for name in ("train.jsonl", "val.jsonl") if not (splits / name).is_file()]
    if missing:
        raise DataError(f"--data-dir {splits} has no {', '.join(missing)}. Fix: point --data-dir at a folder of prepared splits (python -m pipeline.prepare writes them)")
    train, val = _read(splits / "train.jsonl"), _read(splits / "val.jsonl")
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts)
    result: dict[str, Any] = {"threads": args.threads or torch.get_num_threads(), "rounds": args.rounds}
    rng = random.Random(0)
    picked = rng.sample(range(len(val)), min(args.questions, len(val)))
    passages = [r["answer"] for r in train + val]
    with tempfile.TemporaryDirectory(prefix="ragft-bench-int8-") as work:
        path = resolve_model(args.embed_model)
        if parts & {"embedder", "retrieval"}:
            fp32 = HuggingFaceEmbedding(model_name=path, embed_batch_size=64, device="cpu", show_progress_bar=False)
            int8 = Int8Embedding(model_path=path, embed_batch_size=64, threads=args.threads, cache_dir=str(Path(work) / "int8-cache"))
            int8.load()  # the export (seconds) is not part of the timing
            if "embedder" in parts:
                result["embedder"] = embedder_speed(fp32, int8, [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in train[: args.passages]], args.rounds)
                log(f"embedder: {result['embedder']}")
            if "retrieval" in parts:
                result["retrieval"] = _retrieval(fp32, int8, train, val, picked)
                log(f"retrieval: {result['retrieval']}")
            del fp32, int8
        if "cross-encoder" in parts:
            result["cross_encoder"] = _cross_encoder(args, path, Path(work), val, picked, passages, rng)
            log(f"cross-encoder: {result['cross_encoder']}")
    return result


def embedder_speed(fp32: Any, int8: Any, texts: list[str], rounds: int, *, others: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """texts/s of two LlamaIndex embedders on the same texts (their own embed_batch_size), best of
    `rounds` interleaved rounds after a one-batch warm-up, and cos(fp32, int8) of the vectors;
    each of `others` (name -> embedder, e.g. bf16) adds NAME_texts_per_s and NAME_cos_mean/min."""
    import numpy as np

    embedders = {"torch": fp32, "int8": int8, **(others or {})}
    for embedder in embedders.values():
        embedder.get_text_embedding_batch(texts[:64])  # warm-up
    rates, vectors = interleaved_rates({name: (lambda e=e: e.get_text_embedding_batch(texts)) for name, e in embedders.items()}, len(texts), rounds)
    cos = {name: (np.asarray(vectors["torch"]) * np.asarray(vectors[name])).sum(axis=1) for name in embedders if name != "torch"}
    result = {
        "texts": len(texts), "batch": int(fp32.embed_batch_size),
        "torch_texts_per_s": rates["torch"], "int8_texts_per_s": rates["int8"],
        "speedup": rates["int8"] / rates["torch"],
        "cos_mean": float(cos["int8"].mean()), "cos_min": float(cos["int8"].min()),
    }
    for name in others or {}:
        result.update({f"{name}_texts_per_s": rates[name], f"{name}_cos_mean": float(cos[name].mean()), f"{name}_cos_min": float(cos[name].min())})
    return result


def _retrieval(fp32: Any, int8: Any, train: list[dict[str, str]], val: list[dict[str, str]], picked: list[int]) -> dict[str, Any]:
    """Open book (the knowledge base is train + val, "Question: ...\nAnswer: ..." texts) and
    answers only (the same pairs' answers alone)."""
    import numpy as np

    kb = train + val
    gold = [len(train) + i for i in picked]
    questions = [val[i]["question"] for i in picked]
    query = {"fp32": np.asarray([fp32.get_query_embedding(q) for q in questions]), "int8": np.asarray([int8.get_query_embedding(q) for q in questions])}
    result: dict[str, Any] = {"questions": len(questions), "corpus": len(kb)}
    for name, texts in (("open_book", [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in kb]), ("answers_only", [r["answer"] for r in kb])):
        corpus = {"fp32": np.asarray(fp32.get_text_embedding_batch(texts)), "int8": np.asarray(int8.get_text_embedding_batch(texts))}
        result[name] = {
            "fp32": mrr_hit(corpus["fp32"], query["fp32"], gold),
            "int8": mrr_hit(corpus["int8"], query["int8"], gold),
            "fp32_corpus_int8_queries": mrr_hit(corpus["fp32"], query["int8"], gold),
        }
    return result


def _cross_encoder(args: argparse.Namespace, path: str, work: Path, val: list[dict[str, str]], picked: list[int], passages: list[str], rng: random.Random) -> dict[str, Any]:
    import numpy as np
    import torch

    from pipeline.int8 import Int8CrossEncoder
    from pipeline.models import load_cross_encoder
    reranker = args.reranker or str(random_head_cross_encoder(path, work / "cross-encoder"))
    result = {"model": args.reranker or f"{args.embed_model} + random one-logit head", "max_length": args.max_length}
    torch_ce = load_cross_encoder(reranker, device="cpu", max_length=args.max_length)
    int8_ce = Int8CrossEncoder(reranker, max_length=args.max_length, threads=args.threads, cache_dir=work / "int8-cache")
    int8_ce.load()
    identity = torch.nn.Identity()
    pairs = [(val[i % len(val)]["question"], passages[rng.randrange(len(passages))]) for i in range(args.pairs)]
    result.update(cross_encoder_speed(torch_ce, int8_ce, pairs, batch_size=32, rounds=args.rounds))
    lists = [(val[i]["question"], rng.sample(passages, 19) + [val[i]["answer"]]) for i in picked[: args.latency_queries]]
    latency: dict[str, list[float]] = {"torch": [], "int8": []}
    rho, top1 = [], []
    gold_first: dict[str, list[int]] = {"torch": [], "int8": []}
    for question, candidates in lists:
        batch = [(question, p) for p in candidates]
        outputs = {}
        for name, model in (("torch", torch_ce), ("int8", int8_ce)):
            started = time.perf_counter()
            kwargs = {"show_progress_bar": False} if name == "torch" else {}
            outputs[name] = np.asarray(model.predict(batch, batch_size=20, activation_fn=identity, **kwargs))
            latency[name].append(time.perf_counter() - started)
        rho.append(spearman(outputs["torch"], outputs["int8"]))
        top1.append(int(np.argmax(outputs["torch"]) == np.argmax(outputs["int8"])))
        for name in gold_first:  # the question's own answer is the last candidate
            gold_first[name].append(int(np.argmax(outputs[name]) == len(candidates) - 1))
    result.update(
        latency_queries=len(lists), candidates=20,
        torch_p50_ms=1000 * float(np.median(latency["torch"])), int8_p50_ms=1000 * float(np.median(latency["int8"])),
        spearman_mean=float(np.mean(rho)), top1_agreement=float(np.mean(top1)),
        torch_answer_first=float(np.mean(gold_first["torch"])), int8_answer_first=float(np.mean(gold_first["int8"])),
    )
    return result


def cross_encoder_speed(torch_ce: Any, int8_ce: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int, rounds: int, others: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """(question, passage) pairs/s of a sentence-transformers CrossEncoder and an Int8CrossEncoder
    on the same pairs (logits, `batch_size` per pass), best of `rounds` interleaved rounds after a
    one-batch warm-up; each of `others` (name -> cross-encoder, e.g. bf16) adds NAME_pairs_per_s and
    NAME_logit_corr, the Pearson correlation of its logits with torch fp32's."""
    import numpy as np
    import torch

    identity = torch.nn.Identity()
    pairs = list(pairs)
    models = {"torch": torch_ce, "int8": int8_ce, **(others or {})}
    predict = lambda model, items: model.predict(items, batch_size=batch_size, activation_fn=identity, show_progress_bar=False)  # noqa: E731
    for model in models.values():
        predict(model, pairs[:batch_size])  # warm-up
    rates, logits = interleaved_rates({name: (lambda m=m: predict(m, pairs)) for name, m in models.items()}, len(pairs), rounds)
    result = {"pairs": len(pairs), "batch": batch_size, "torch_pairs_per_s": rates["torch"], "int8_pairs_per_s": rates["int8"], "speedup": rates["int8"] / rates["torch"]}
    for name in others or {}:
        correlation = float(np.corrcoef(np.asarray(logits["torch"], dtype=float).ravel(), np.asarray(logits[name], dtype=float).ravel())[0, 1]) if len(pairs) > 1 else 1.0
        result.update({f"{name}_pairs_per_s": rates[name], f"{name}_logit_corr": correlation})
    return result


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"threads {result['threads']}, best of {result['rounds']} interleaved rounds", ""]
    e, c = result.get("embedder"), result.get("cross_encoder")
    if e or c:
        lines += ["| part | torch fp32 | int8 ONNX | speed-up | agreement |", "|---|---|---|---|---|"]
    if e:
        lines.append(f"| embedder ({e['texts']} texts, batch {e['batch']}) | {e['torch_texts_per_s']:.0f} texts/s | {e['int8_texts_per_s']:.0f} texts/s | {e['speedup']:.2f}x | cos mean {e['cos_mean']:.4f}, min {e['cos_min']:.4f} |")
    if c:
        lines.append(f"| cross-encoder ({c['pairs']} pairs, max_length {c['max_length']}, batch {c['batch']}) | {c['torch_pairs_per_s']:.0f} pairs/s | {c['int8_pairs_per_s']:.0f} pairs/s | {c['speedup']:.2f}x | Spearman {c['spearman_mean']:.3f}, top-1 {c['top1_agreement']:.2f} |")
        lines.append(f"| rerank 20 candidates, batch 20 (p50 of {c['latency_queries']} queries) | {c['torch_p50_ms']:.0f} ms | {c['int8_p50_ms']:.0f} ms | {c['torch_p50_ms'] / c['int8_p50_ms']:.2f}x | own answer ranked first: {c['torch_answer_first']:.2f} / {c['int8_answer_first']:.2f} |")
    r = result.get("retrieval")
    if r:
        lines += ["", f"Dense retrieval, {r['questions']} val questions, knowledge base train + val ({r['corpus']} pairs):", "", "| corpus | MRR@10 fp32 | MRR@10 int8 | fp32 corpus + int8 queries | hit@1 fp32 / int8 |", "|---|---|---|---|---|"]
        for name in ("open_book", "answers_only"):
            m = r[name]
            lines.append(f"| {name.replace('_', ' ')} | {m['fp32']['mrr@10']:.4f} | {m['int8']['mrr@10']:.4f} | {m['fp32_corpus_int8_queries']['mrr@10']:.4f} | {m['fp32']['hit@1']:.3f} / {m['int8']['hit@1']:.3f} |")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m eval.bench int8")
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--data-dir", default=str(SEED_SPLITS), help="Folder with train.jsonl and val.jsonl (default: the seed splits in ../shared, read in place).")
    parser.add_argument("--embed-model", default=MINILM, help="Bi-encoder (hub id or folder).")
    parser.add_argument("--reranker", default=None, help="Cross-encoder folder; default: the embedder's encoder with a random one-logit head.")
    parser.add_argument("--passages", type=int, default=500, help="Texts embedded for the speed figure.")
    parser.add_argument("--pairs", type=int, default=400, help="(question, passage) pairs scored for the speed figure.")
    parser.add_argument("--questions", type=int, default=100, help="Val questions of the retrieval-quality figure.")
    parser.add_argument("--latency-queries", type=int, default=20, help="Queries of 20 candidates timed one by one.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens of a (question, passage) pair.")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads; default: all cores.")
    parser.add_argument("--parts", type=lambda v: [p.strip() for p in v.split(",") if p.strip()], default=list(PARTS), help=f"Comma-separated subset of {', '.join(PARTS)}.")
    parser.add_argument("--rounds", type=int, default=2, help="Timed rounds per backend (best is kept).")
    parser.add_argument("--format", choices=("md", "json"), default="md", help="Print a Markdown table or JSON.")
    parser.add_argument("--out", default=None, help="Also write the JSON result to this file (atomically).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        unknown = [p for p in args.parts if p not in PARTS]
        if unknown or not args.parts:
            raise SystemExit(f"--parts: {', '.join(unknown) or 'nothing'} is not one of {', '.join(PARTS)}")
        for name in ("passages", "pairs", "questions", "latency_queries", "max_length", "rounds"):
            if getattr(args, name) <= 0:
                raise SystemExit(f"--{name.replace('_', '-')} must be > 0; got {getattr(args, name)}")
        result = run(args, log=lambda m: print(m, file=sys.stderr))
        if args.out:
            atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2) if args.format == "json" else to_markdown(result))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
