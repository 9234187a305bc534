"""Compare generators on the same retrieved context: base vs plain vs RAFT adapters, plus the
no-LLM baseline that returns the top retrieved answer.

    python -m finetune.evaluate_generators --config tiny                                   # val split
    python -m finetune.evaluate_generators --config tiny --set run_dir=runs/seed --set data.dir=runs/seed/data
    python -m finetune.evaluate_generators --config tiny --systems base,raft --set eval.limit=50

Every generator gets, for each question, the same `generator.context_top_k` passages from the
knowledge base (`retrieve.mode` retriever, built from the train split by `python -m pipeline.index`),
rendered by the one with-context prompt of pipeline/generate.py, greedy, `generator.max_new_tokens`.
`nn_answer` returns the answer of the top dense (MiniLM) hit, the reference experiment's
retrieval-only baseline. Scores: corpus BLEU-4 (sacrebleu 13a) and mean ROUGE-L F1 (rouge_score,
no stemmer) from eval.metrics, with bootstrap 95% intervals, and a paired bootstrap of raft - plain.

Writes to {run_dir}/generator-eval/<split>/: predictions_<system>.jsonl (question, prediction,
reference, passages) with a fingerprint beside it (a later run reuses predictions whose inputs,
generator settings and adapter are unchanged), scores.json, and the resolved config. The split is `--split` (default val:
the test split stays untouched while adapters are being tuned).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pipeline  # noqa: F401  (first: hides bitsandbytes on machines without CUDA)
from pipeline.config import Config, ConfigError, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import SPLITS, load_split
from pipeline.errors import run_cli
from pipeline.fileio import write_json, write_jsonl

SYSTEMS = ("nn_answer", "base", "plain", "raft")


def adapter_for(config: Config, system: str) -> str | None:
    return {"base": None, "plain": config.finetune.generator.output, "raft": config.finetune.raft.output}[system]


def _fingerprint(config: Config, system: str, questions: list[str], contexts: list[list[str]]) -> str:
    """What a system's predictions depend on: inputs, generator settings, the adapter's own digest."""
    import hashlib

    adapter = adapter_for(config, system) if system != "nn_answer" else None
    adapter_digest = None
    if adapter and (Path(adapter) / "adapter_config.json").is_file():
        adapter_digest = (Path(adapter) / "ragft_config.yaml").read_text(encoding="utf-8") if (Path(adapter) / "ragft_config.yaml").is_file() else None
    payload = {"system": system, "questions": questions, "contexts": contexts, "adapter": adapter, "adapter_config": adapter_digest,
               "generator": config.generator.__dict__ if system != "nn_answer" else None, "index": config.index.dir}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def _context_key(config: Config, questions: list[str], kb: Any) -> str:
    """Retrieved contexts depend on the questions, the retrieve settings and the index state."""
    import hashlib

    manifest = {k: v for k, v in kb.manifest.items() if k != "updated"}
    payload = {"questions": questions, "retrieve": config.retrieve.__dict__, "k": config.generator.context_top_k, "index": config.index.dir, "manifest": manifest}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def _cached_contexts(out: Path, config: Config, questions: list[str], kb: Any) -> list[list[str]] | None:
    path = out / "contexts.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved["contexts"] if saved.get("key") == _context_key(config, questions, kb) else None


def _cached(out: Path, system: str, fingerprint: str) -> tuple[list[str], float] | None:
    meta, rows = out / f"predictions_{system}.meta.json", out / f"predictions_{system}.jsonl"
    if not (meta.is_file() and rows.is_file()):
        return None
    facts = json.loads(meta.read_text(encoding="utf-8"))
    if facts.get("fingerprint") != fingerprint:
        return None
    # split on "\n" only: str.splitlines would also cut inside a JSON string holding U+2028
    return [json.loads(line)["prediction"] for line in rows.read_text(encoding="utf-8").split("\n") if line.strip()], facts.get("seconds", 0.0)


def evaluate_generators(config: Config, split: str = "val", systems: Sequence[str] = SYSTEMS, *, reuse: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    from eval.metrics import compute_answer_scores, paired_answer_tests
    from pipeline.generate import answer_batch
    from pipeline.models import load_llm
    from pipeline.retrieve import build_retriever, open_index

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ConfigError(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    records = load_split(config.data.dir, split)[: config.eval.limit]
    questions = [r["question"] for r in records]
    references = [r["answer"] for r in records]
    kb = open_index(config)
    k = config.generator.context_top_k
    retriever = build_retriever(config, mode=config.retrieve.mode, top_k=k, kb=kb)
    started = time.perf_counter()
    out = Path(config.run_dir) / "generator-eval" / split
    contexts = _cached_contexts(out, config, questions, kb) if reuse else None
    if contexts is None:
        from tqdm.auto import tqdm

        contexts = [[hit.node.get_content() for hit in retriever.retrieve(q)] for q in tqdm(questions, desc="retrieve", unit="q")]
        write_json(out / "contexts.json", {"key": _context_key(config, questions, kb), "contexts": contexts})
    log(f"retrieved       top-{k} {config.retrieve.mode} passages for {len(questions)} {split} questions in {time.perf_counter() - started:.1f} s")

    predictions: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for system in systems:
        started = time.perf_counter()
        fingerprint = _fingerprint(config, system, questions, contexts)
        cached = _cached(out, system, fingerprint) if reuse else None
        if cached is not None:
            predictions[system], seconds[system] = cached
            log(f"{system:<15} reused {out / f'predictions_{system}.jsonl'} (same questions, context, generator settings and adapter)")
            continue
        if system == "nn_answer":
            dense = build_retriever(config, mode="dense", top_k=1, kb=kb)
            predictions[system] = [(dense.retrieve(q) or [None])[0].node.metadata.get("answer", "") for q in questions]
        else:
            adapter = adapter_for(config, system)
            if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
                raise ConfigError(f"system {system}: no adapter at {adapter}; train it with python -m finetune.generator --mode {system} (same --config/--set)")
            llm = load_llm(config, adapter=adapter)
            predictions[system] = answer_batch(llm, questions, contexts, max_passage_chars=config.generator.max_passage_chars)
            del llm
        seconds[system] = round(time.perf_counter() - started, 1)
        log(f"{system:<15} {seconds[system]} s")
        write_jsonl(out / f"predictions_{system}.jsonl", ({"question": q, "prediction": p, "reference": r, "passages": c} for q, p, r, c in zip(questions, predictions[system], references, contexts)))
        write_json(out / f"predictions_{system}.meta.json", {"fingerprint": fingerprint, "seconds": seconds[system]})

    scores = {s: compute_answer_scores(predictions[s], references, questions=questions) for s in systems}
    table = {}
    for system in systems:
        summary = scores[system].summary(samples=config.eval.bootstrap_samples, seed=config.eval.seed)
        table[system] = {"bleu4": round(summary["bleu4"], 4), "rougeL": round(summary["rougeL"], 4), "ci95": {m: [round(v, 4) for v in summary["ci95"][m]] for m in ("bleu4", "rougeL")}, "seconds": seconds[system]}
    result: dict[str, Any] = {"split": split, "n": len(records), "context_top_k": k, "retriever": config.retrieve.mode, "systems": table}
    if "raft" in scores and "plain" in scores:
        tests = paired_answer_tests(scores["raft"], scores["plain"], samples=config.eval.bootstrap_samples, seed=config.eval.seed)
        result["raft_minus_plain"] = {m: {k2: round(v, 4) for k2, v in tests[m].items()} for m in ("bleu4", "rougeL")}

    write_json(out / "scores.json", result)
    save_resolved_config(config, out, extra={"kind": "generator-eval", "split": split, "systems": list(systems)})

    log(f"\n{split} split, n={len(records)}, every generator given the same top-{k} {config.retrieve.mode} context")
    log(f"{'system':<12} {'BLEU-4':>8} {'95% CI':>17} {'ROUGE-L':>8} {'95% CI':>17}")
    for system, row in table.items():
        b, r = row["ci95"]["bleu4"], row["ci95"]["rougeL"]
        log(f"{system:<12} {row['bleu4']:>8.4f} [{b[0]:.4f}, {b[1]:.4f}] {row['rougeL']:>8.4f} [{r[0]:.4f}, {r[1]:.4f}]")
    if "raft_minus_plain" in result:
        for metric, t in result["raft_minus_plain"].items():
            log(f"raft - plain {metric}: {t['diff']:+.4f} (95% CI [{t['ci95_low']:+.4f}, {t['ci95_high']:+.4f}], paired bootstrap p={t['p_value']:.3f})")
    log(f"wrote {out}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.evaluate_generators",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", choices=SPLITS, default="val", help="Split to score (default val).")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"Comma-separated subset of {', '.join(SYSTEMS)} (default: all).")
    parser.add_argument("--no-reuse", action="store_true", help="Regenerate every system. By default a system's earlier predictions in the output folder are reused when its questions, retrieved context, generator settings and adapter are unchanged.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        config = config_from_args(args)
        evaluate_generators(config, args.split, [s.strip() for s in args.systems.split(",") if s.strip()], reuse=not args.no_reuse)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
