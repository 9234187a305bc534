"""The answerability benchmark: does the agent's grade tell a question the knowledge base answers
from one it does not?

    python -m eval.answerability --data ../shared/data/seed-technical-qa/splits --split dev --fit results/answerability/grade-calibration.json --out results/answerability/dev.json
    python -m eval.answerability --data ... --split test --calibration results/answerability/grade-calibration.json --out results/answerability/test.json

The knowledge base: every question/answer pair of the data (train + val + test: open book) and
Python's reference topics (the document benchmark's pydoc files, eval.documents), in a benchmark
copy of the indexes (`{run_dir}/answerability/`). The questions of a split (dev: the val split's
seed questions and the dev files; test: the test split's and the test files):

- in the knowledge base: a fixed sample of the split's seed questions (`--seed-questions`), the
  realistic set's hand-written single messages (verbose and compound, eval/realistic/data), and the
  document benchmark's hand-written questions (eval/documents/data);
- not in it, written by hand (`data/out_of_kb_{dev,test}.jsonl`): `far` (cooking, sports, personal
  finance, ...) and `near` (technical topics the corpus never covers: other languages' features,
  infrastructure tools it does not name).

Each question goes through `full`'s first round exactly as the engine runs it (condense, retrieve,
rerank; `retrieve_only`, one round, no grade) and keeps the grade's features (pipeline.grade);
they are cached per question in `{run_dir}/answerability/features-<split>-<stack>.jsonl`, so a
killed run resumes. `--fit` (dev) fits the logistic grade and chooses its threshold: the highest
that refuses at most `--max-refused` of the dev in-KB questions. Reported with a calibration: the
expected calibration error and a reliability diagram, and the refusal rate of each kind with 95%
intervals.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pipeline.config import Config
from pipeline.data import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("dev", "test")
SEED_SPLIT = {"dev": "val", "test": "test"}  # the seed split whose questions are the in-KB ones
KINDS = ("seed", "realistic", "documents", "near", "far")
IN_KB = ("seed", "realistic", "documents")
SINGLE_MESSAGE_FAMILIES = ("verbose", "compound")


def out_of_kb_questions(split: str, data_dir: Path = DATA_DIR) -> list[dict[str, Any]]:
    if split not in SPLITS:
        raise DataError(f"unknown answerability split {split!r}; use dev (fit and choose) or test (run once)")
    path = data_dir / f"out_of_kb_{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [r.get("id") for r in rows if r.get("kind") not in ("near", "far") or not str(r.get("question", "")).strip()]
    if bad:
        raise DataError(f"{path}: rows {bad} need kind near or far and a question")
    return [{"id": r["id"], "kind": r["kind"], "question": r["question"], "answerable": 0} for r in rows]


def in_kb_questions(data_dir: str | Path, split: str, *, seed_questions: int, seed: int = 42) -> list[dict[str, Any]]:
    """The split's in-KB questions: a seeded sample of its seed questions, the realistic set's
    hand-written single messages, and the document benchmark's questions."""
    from eval.documents.benchmark import load_questions
    from eval.realistic.benchmark import DATA_DIR as REALISTIC_DIR
    from pipeline.data import load_split

    seed_rows = load_split(data_dir, SEED_SPLIT[split])
    chosen = sorted(random.Random(seed).sample(range(len(seed_rows)), min(seed_questions, len(seed_rows))))
    rows = [{"id": f"seed-{SEED_SPLIT[split]}-{i}", "kind": "seed", "question": seed_rows[i]["question"], "answerable": 1} for i in chosen]
    realistic = REALISTIC_DIR / f"{SEED_SPLIT[split]}.jsonl"
    for line in realistic.read_text(encoding="utf-8").splitlines():
        if line.strip():
            case = json.loads(line)
            if case["family"] in SINGLE_MESSAGE_FAMILIES and not case.get("history"):
                rows.append({"id": case["id"], "kind": "realistic", "question": case["message"], "answerable": 1})
    rows += [{"id": q["id"], "kind": "documents", "question": q["question"], "answerable": 1} for q in load_questions(split)]
    return rows


def benchmark_config(config: Config) -> Config:
    """The open-book knowledge base with the pydoc files, in its own index folders; one round, no
    grade (the features are read before any grade)."""
    from eval.documents.benchmark import pydoc_folder
    from pipeline.config import config_from_dict

    raw = config.to_dict()
    folder = Path(config.run_dir) / "answerability"
    raw["data"]["knowledge_splits"] = ["train", "val", "test"]
    raw["index"]["dir"] = str(folder / "index")
    raw["index"]["finetuned_dir"] = str(folder / "index-finetuned")
    raw["index"]["sources"] = [str(pydoc_folder(config))]
    raw["agent"].update({"calibration": None, "max_rounds": 1, "grade_threshold": 0.0})
    return config_from_dict(raw)


def features_path(config: Config, split: str) -> Path:
    from pipeline.config import config_digest

    stack = config_digest(config, ["data", "index", "retrieve", "rewrite", "rerank", "generator"])
    return Path(config.run_dir) / "answerability" / f"features-{split}-{stack}.jsonl"


def collect_features(config: Config, split: str, rows: Sequence[Mapping[str, Any]], *, show_progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per question: `full`'s first round (searched as, the top passages) and its grade features;
    read from the cache where a run already measured it with the same settings."""
    from tqdm.auto import tqdm

    from eval.documents.benchmark import export_pydoc, pydoc_folder
    from pipeline.engine import Components, build_query_engine
    from pipeline.grade import grade_features
    from pipeline.index import ingest_all_indexes

    bench = benchmark_config(config)
    cache = features_path(bench, split)
    done: dict[str, dict[str, Any]] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"] + "\0" + row["question"]] = row
    todo = [r for r in rows if r["id"] + "\0" + r["question"] not in done]
    log(f"answerability {split}: {len(rows)} questions, {len(rows) - len(todo)} from the cache ({cache}), {len(todo)} to run")
    if todo:
        export_pydoc(pydoc_folder(config))
        started = time.perf_counter()
        ingest_all_indexes(bench, show_progress=show_progress, log=log)
        log(f"knowledge base (open book + pydoc topics) ready in {time.perf_counter() - started:.1f} s")
        engine = build_query_engine(bench, "full", components=Components(bench))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a", encoding="utf-8") as out:
            for row in tqdm(todo, desc=f"answerability {split}: full's first round", disable=not show_progress):
                started = time.perf_counter()
                result = engine.retrieve_only(row["question"])
                nodes = list(result["nodes"])
                made = {
                    **row,
                    "searched_as": result["state"].asked,
                    "features": grade_features(nodes),
                    "top": [{"id": n.node.node_id, "file": n.node.metadata.get("file_name"), "rerank_score": n.node.metadata.get("rerank_score")} for n in nodes],
                    "seconds": round(time.perf_counter() - started, 3),
                }
                out.write(json.dumps(made) + "\n")
                out.flush()
                done[row["id"] + "\0" + row["question"]] = made
    return [done[r["id"] + "\0" + r["question"]] for r in rows]


def fit_calibration(rows: Sequence[Mapping[str, Any]], *, max_refused: float, fitted_on: Mapping[str, Any]) -> Any:
    from pipeline.grade import GradeCalibration, choose_threshold, fit_logistic

    usable = [r for r in rows if r["features"] is not None]
    intercept, coef = fit_logistic([r["features"] for r in usable], [r["answerable"] for r in usable])
    provisional = GradeCalibration(intercept=intercept, coef=coef, threshold=0.5)
    probabilities = [provisional.probability(r["features"]) for r in usable]
    threshold = choose_threshold(probabilities, [r["answerable"] for r in usable], max_refused_answerable=max_refused)
    return GradeCalibration(intercept=intercept, coef=coef, threshold=threshold, fitted_on={**fitted_on, "questions": len(usable), "max_refused_in_kb": max_refused})


def evaluate(rows: Sequence[Mapping[str, Any]], calibration: Any, *, samples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Refusal rates per kind, in-KB and out-of-KB; ECE and the reliability bins of the grade."""
    from pipeline.grade import expected_calibration_error, reliability_bins
    from pipeline.metrics import summarize

    probabilities = [calibration.probability(r["features"]) if r["features"] is not None else 1.0 for r in rows]
    refused = [1.0 if p < calibration.threshold else 0.0 for p in probabilities]
    labels = [int(r["answerable"]) for r in rows]
    groups: dict[str, list[float]] = {}
    for row, r in zip(rows, refused):
        groups.setdefault(row["kind"], []).append(r)
        groups.setdefault("in-KB" if row["answerable"] else "out-of-KB", []).append(r)
    refusal = {kind: summarize({"refused": values}, samples=samples, seed=seed) for kind, values in groups.items()}
    return {
        "threshold": calibration.threshold,
        "ece": expected_calibration_error(probabilities, labels),
        "reliability": reliability_bins(probabilities, labels),
        "refusal": {kind: {"rate": s["refused"], "ci95": s["ci95"]["refused"], "n": s["n"]} for kind, s in refusal.items()},
        "probabilities": [round(p, 6) for p in probabilities],
    }


def trace_features(trace: Mapping[str, Any], top_n: int) -> Optional[dict[str, float]]:
    """The grade's features of a prediction's first round, read from its trace (eval.compare's
    predictions keep every candidate's scores, in reranked order): the first `top_n` reranked
    candidates are the passages the round kept."""
    from pipeline.grade import features_of

    rounds = trace.get("rounds") or []
    kept = (rounds[0].get("reranked") or [])[:top_n] if rounds else []
    return features_of([c.get("rerank_score") for c in kept], [c.get("retrieval_score") for c in kept])


def refusals_on_predictions(path: str | Path, calibration: Any, *, top_n: int, samples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """What the calibrated grade would refuse among a system's answered predictions (an
    eval.compare predictions file), and their ROUGE-L if those answers were the refusal instead."""
    from eval.metrics import lexical_scores
    from pipeline.engine import refusal_text
    from pipeline.metrics import paired_mean_test

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path}: no predictions")
    features = [trace_features(r.get("trace") or {}, top_n) for r in rows]
    refused = [f is not None and calibration.probability(f) < calibration.threshold for f in features]
    answered = [r["prediction"] for r in rows]
    with_refusals = [refusal_text(r["trace"].get("search_question") or r["question"]) if no else r["prediction"] for r, no in zip(rows, refused)]
    references = [r["reference"] for r in rows]
    before = lexical_scores(answered, references)["rougeL_per_question"]
    after = lexical_scores(with_refusals, references)["rougeL_per_question"]
    return {
        "predictions": str(path),
        "questions": len(rows),
        "refused": sum(refused),
        "refused_rate": sum(refused) / len(rows),
        "rougeL_answered": float(sum(before) / len(before)),
        "rougeL_with_refusals": float(sum(after) / len(after)),
        "rougeL_change": paired_mean_test(after, before, samples=samples, seed=seed),
        "refused_questions": [r["question"] for r, no in zip(rows, refused) if no],
    }


def reliability_plot(result: Mapping[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = result["evaluation"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["answerable"] for b in bins], marker="o", label=f"grade (ECE {result['evaluation']['ece']:.3f})")
    for b in bins:
        ax.annotate(str(b["count"]), (b["mean_p"], b["answerable"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axvline(result["evaluation"]["threshold"], color="red", linewidth=1, label=f"refuse below {result['evaluation']['threshold']:.2f}")
    ax.set_xlabel("predicted P(answerable)")
    ax.set_ylabel("share answerable (in the knowledge base)")
    ax.set_title(f"answerability {result['split']}: {result['questions']} questions")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(result: Mapping[str, Any]) -> str:
    evaluation = result["evaluation"]
    lines = [
        f"### Answerability, {result['split']}: {result['questions']} questions; grade refuses below P(answerable) {evaluation['threshold']:.3f}, ECE {evaluation['ece']:.3f}",
        "",
        "| questions | n | refused [95% interval] |",
        "|---|---:|---:|",
    ]
    for kind in ("far", "near", "out-of-KB", "seed", "realistic", "documents", "in-KB"):
        if kind in evaluation["refusal"]:
            r = evaluation["refusal"][kind]
            lines.append(f"| {kind} | {r['n']} | {r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    calibration = result["calibration"]
    lines += [
        "",
        "Grade: P(answerable) = sigmoid(" + f"{calibration['intercept']:+.3f}" + "".join(f" {w:+.3f} * {f}" for f, w in calibration["coef"].items()) + "), fitted on " + f"{calibration['fitted_on'].get('split', '?')} ({calibration['fitted_on'].get('questions', '?')} questions); `ql`: log of the best query-likelihood score, `dense`: the best retrieval score.",
    ]
    return "\n".join(lines)
