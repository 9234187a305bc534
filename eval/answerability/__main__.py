"""`python -m eval.answerability`: the answerability benchmark (see eval/answerability/benchmark.py)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from eval.answerability.benchmark import KINDS, SPLITS, collect_features, evaluate, fit_calibration, in_kb_questions, out_of_kb_questions, reliability_plot, to_markdown
from pipeline.cli import add_io_arguments, config_for_data, run_record
from pipeline.config import ConfigError, add_config_arguments
from pipeline.errors import run_cli
from pipeline.fileio import write_json


def build_parser() -> argparse.ArgumentParser:
    from eval.answerability import benchmark

    doc = benchmark.__doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m eval.answerability", description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder: its QA pairs (all splits: open book) form the knowledge base with the pydoc topics, and its artifacts are the systems'. The realistic messages ask about the seed data's questions: give the seed splits (../shared/data/seed-technical-qa/splits) for a meaningful run. Default: data.dir of the profile.",
        split="dev (fit the grade and choose its threshold) or test (run once with the dev calibration). Default: dev.",
        split_choices=SPLITS,
        split_default="dev",
        formats="md (a table) or json.",
        out="Write the result as JSON here, and the reliability diagram beside it (.png).",
    )
    parser.add_argument("--fit", metavar="PATH", help="Fit the grade on this split's questions and write the calibration here (pipeline.grade; agent.calibration reads it). Fit on dev only.")
    parser.add_argument("--calibration", metavar="PATH", help="Evaluate this fitted calibration (from --fit on dev). Either --fit or --calibration is needed.")
    parser.add_argument("--max-refused", type=float, default=0.03, metavar="SHARE", help="With --fit: the highest threshold that refuses at most this share of the in-KB questions (default 0.03: the target is 0.05 on test, with room for the dev/test gap).")
    parser.add_argument("--seed-questions", type=int, default=30, metavar="N", help="In-KB questions sampled (seeded) from the split's seed questions (default 30), beside the realistic and document ones.")
    parser.add_argument("--predictions", metavar="FILE", help="Instead of the benchmark: what --calibration would refuse among a system's answered questions (an eval.compare predictions file, e.g. {run_dir}/compare/predictions/full.jsonl, whose traces hold the scores), and their ROUGE-L with those answers replaced by the refusal.")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="Only the first N questions of each kind (seed, realistic, documents, near, far): quick runs. Default: all.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def body() -> None:
        from pipeline.grade import GradeCalibration

        if bool(args.fit) == bool(args.calibration):
            raise ConfigError("give exactly one of --fit PATH (fit the grade on dev) and --calibration PATH (evaluate a fitted one)")
        if args.fit and args.split != "dev":
            raise ConfigError(f"--fit on --split {args.split}: fit and choose the threshold on dev; run test once with --calibration")
        if not 0.0 <= args.max_refused < 1.0:
            raise ConfigError(f"--max-refused {args.max_refused}: a share in [0, 1)")
        if args.seed_questions < 0:
            raise ConfigError(f"--seed-questions {args.seed_questions}: a count >= 0")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit {args.limit}: a count >= 1")
        config = config_for_data(args)
        if args.predictions:
            if not args.calibration:
                raise ConfigError("--predictions needs --calibration PATH (a grade fitted with --fit on dev)")
            from eval.answerability.benchmark import refusals_on_predictions

            report = refusals_on_predictions(args.predictions, GradeCalibration.load(args.calibration), top_n=config.rerank.top_n, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
            report["run"] = run_record("eval.answerability", argv, started)
            if args.out:
                write_json(args.out, report)
            change = report["rougeL_change"]
            print(json.dumps(report, indent=2) if args.format == "json" else f"{args.predictions}: {report['refused']} of {report['questions']} refused ({report['refused_rate']:.3f}); ROUGE-L {report['rougeL_answered']:.4f} answered -> {report['rougeL_with_refusals']:.4f} with the refusals, {change['diff']:+.4f} [{change['ci95_low']:+.4f}, {change['ci95_high']:+.4f}]")
            return
        rows = in_kb_questions(config.data.dir, args.split, seed_questions=args.seed_questions, seed=config.eval.seed) + out_of_kb_questions(args.split)
        if args.limit:
            rows = [r for kind in KINDS for r in [r for r in rows if r["kind"] == kind][: args.limit]]
        measured = collect_features(config, args.split, rows, show_progress=not args.no_progress)
        if args.fit:
            calibration = fit_calibration(measured, max_refused=args.max_refused, fitted_on={"split": args.split, "data": str(config.data.dir)})
            calibration.save(args.fit)
            print(f"wrote the grade calibration to {args.fit}")
        else:
            calibration = GradeCalibration.load(args.calibration)
        evaluation = evaluate(measured, calibration, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
        result = {
            "split": args.split,
            "questions": len(measured),
            "calibration": {"intercept": calibration.intercept, "coef": calibration.coef, "threshold": calibration.threshold, "fitted_on": calibration.fitted_on},
            "evaluation": evaluation,
            "per_question": [{k: r[k] for k in ("id", "kind", "question", "answerable", "searched_as", "features", "top")} | {"p": p} for r, p in zip(measured, evaluation["probabilities"])],
            "seconds_per_question": round(sum(r["seconds"] for r in measured) / max(len(measured), 1), 3),
        }
        result["run"] = run_record("eval.answerability", argv, started)
        if args.out:
            write_json(args.out, result)
            reliability_plot(result, Path(args.out).with_suffix(".png"))
        print(json.dumps({k: v for k, v in result.items() if k != "per_question"}, indent=2) if args.format == "json" else to_markdown(result))

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
