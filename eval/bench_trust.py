"""What the agent's grade and the support check cost per question, on a committed run's own data.

    python -m eval.bench trust --features results/answerability/test.json --answers results/seed/predictions/full.jsonl

The grade (pipeline.grade) reads the scores the reranker already left on the round's passages, and
the support check (pipeline.support) the answer and the passages it was given: neither passes over
the candidates again. Timed here, per question, over the questions of an answerability run (its
features) and of an eval.compare predictions file (its answers and their sources' text), each
repeated `--repeat` times after one untimed pass; p50 / p90 in microseconds. For scale: `full`'s
retrieve + rerank + generate take seconds per question.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import run_cli


def _us(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1e6
    return {"n": len(values), "p50_us": round(float(np.percentile(arr, 50)), 1), "p90_us": round(float(np.percentile(arr, 90)), 1)}


def measure(features_run: Any, predictions: Sequence[Any], calibration: Any, *, repeat: int) -> dict[str, Any]:
    from llama_index.core.schema import NodeWithScore, TextNode

    from pipeline.grade import grade_features
    from pipeline.support import lexical_support

    rounds = []
    for row in features_run["per_question"]:
        if row["features"] is None:
            continue
        nodes = [NodeWithScore(node=TextNode(text="", metadata={"rerank_score": top.get("rerank_score"), "retrieval_score": row["features"]["dense"]}), score=0.0) for top in row["top"]]
        rounds.append(nodes)
    grade_times = []
    for n in range(repeat + 1):
        for nodes in rounds:
            started = time.perf_counter()
            features = grade_features(nodes)
            if features is not None:
                calibration.probability(features)
            if n:  # the first pass warms up
                grade_times.append(time.perf_counter() - started)
    support_times = []
    for n in range(repeat + 1):
        for row in predictions:
            passages = [source["text"] for source in row.get("sources") or []]
            started = time.perf_counter()
            lexical_support(row["prediction"], passages)
            if n:
                support_times.append(time.perf_counter() - started)
    return {"grade": _us(grade_times), "support": _us(support_times), "questions": {"grade": len(rounds), "support": len(predictions)}, "repeat": repeat}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench trust", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, metavar="RUN.json", help="An eval.answerability run (its per-question features and top passages' scores).")
    parser.add_argument("--answers", required=True, metavar="FILE", help="An eval.compare predictions file (answers and their sources' text), e.g. results/seed/predictions/full.jsonl.")
    parser.add_argument("--calibration", default=None, metavar="PATH", help="The grade to time. Default: the one the answerability run used.")
    parser.add_argument("--repeat", type=int, default=20, metavar="N", help="Timed passes over the questions (default 20).")
    parser.add_argument("--out", metavar="FILE", help="Also write the figures as JSON here.")
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.data import DataError
        from pipeline.grade import GradeCalibration

        if args.repeat < 1:
            raise DataError(f"--repeat {args.repeat}: at least 1")
        try:
            run = json.loads(Path(args.features).read_text(encoding="utf-8"))
            predictions = [json.loads(line) for line in Path(args.answers).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read the runs ({error}); give an eval.answerability --out JSON and an eval.compare predictions JSONL") from error
        if "per_question" not in run:
            raise DataError(f"{args.features}: not an eval.answerability run (no per_question)")
        calibration = GradeCalibration.load(args.calibration) if args.calibration else GradeCalibration(**{k: run["calibration"][k] for k in ("intercept", "coef", "threshold")})
        result = measure(run, predictions, calibration, repeat=args.repeat)
        if args.out:
            from pipeline.fileio import write_json

            write_json(args.out, result)
        print(f"grade: p50 {result['grade']['p50_us']} µs, p90 {result['grade']['p90_us']} µs per question ({result['questions']['grade']} questions x {args.repeat})")
        print(f"support check: p50 {result['support']['p50_us']} µs, p90 {result['support']['p90_us']} µs per answer ({result['questions']['support']} answers x {args.repeat})")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
