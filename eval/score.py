"""Score prediction files: every answer metric with bootstrap 95% intervals, one row per file.

    python -m eval.score ../shared/data/seed-technical-qa/results/*.jsonl
    python -m eval.score ../shared/data/seed-technical-qa/results/*.jsonl --format json --no-bertscore
    python -m eval.score runs/default/compare/predictions/*.jsonl --baseline rag_vanilla --out runs/default/scores
    python -m eval.score preds.jsonl --bertscore-model sentence-transformers/all-MiniLM-L6-v2 --samples 2000

Each file holds one JSON object per line with string fields `question`, `prediction` and
`reference` (other fields are ignored). Metrics: BLEU-4 (corpus, sacrebleu 13a, 0-1 scale),
ROUGE-L F1 (rouge_score, no stemmer), BERTScore F1 (no rescale), exact match (plain and
SQuAD-normalized), token F1. Systems are named by file stem. Every system is paired-tested
(bootstrap) against the baseline file (default: the stem `rag_vanilla`, or `rag_vanilla_test`)
on the questions both answered.

BERTScore uses eval.bertscore_model of the profile (roberta-large, the reference experiment's
model, unless the profile names another; tiny.yaml names the bundled MiniLM). When that model is
not on this machine and no model was named with --bertscore-model, the bundled MiniLM (layer 6) is
used instead; a line on stderr says so, and the table header and the JSON name the model used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from eval.metrics import BertScoreModel, compute_answer_scores, paired_answer_tests
from eval.report import render_paired_tests, render_table
from pipeline.cli import add_io_arguments
from pipeline.config import Config, add_config_arguments, config_from_args, save_resolved_config
from pipeline.data import DataError
from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text, write_json

REQUIRED_FIELDS = ("question", "prediction", "reference")
SPLIT_SUFFIXES = ("_test", "_val", "_train")


class PredictionFileError(DataError):
    """A prediction file is missing, empty, or has a bad line; the message names file and line."""


def read_predictions(path: str | Path, *, whole: bool = False) -> list[dict[str, Any]]:
    """The rows of a prediction file, each checked for string question/prediction/reference; only
    those three fields unless `whole` (eval.compare's sources, trace and timings too)."""
    path = Path(path)
    if path.is_dir():
        raise PredictionFileError(f"{path}: is a folder; pass the prediction files in it, e.g. {path}/*.jsonl")
    if not path.is_file():
        raise PredictionFileError(f"{path}: no such file; pass .jsonl files written by eval.compare or with question/prediction/reference per line")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first line
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PredictionFileError(f"{path} line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8 JSON lines") from None
    rows = []
    # Only "\n" ends a line: str.splitlines would also cut at U+2028, U+0085 and other characters
    # that json.dumps(ensure_ascii=False) leaves unescaped inside a string (any language's text).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
            raise PredictionFileError(f"{path} line {number}: not valid JSON ({problem}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise PredictionFileError(f"{path} line {number}: expected a JSON object with {', '.join(REQUIRED_FIELDS)}; got a {type(obj).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in obj]
        if missing:
            raise PredictionFileError(
                f"{path} line {number}: missing field(s) {', '.join(repr(m) for m in missing)}; every line needs {', '.join(REQUIRED_FIELDS)}"
            )
        for name in REQUIRED_FIELDS:
            if not isinstance(obj[name], str):
                raise PredictionFileError(
                    f"{path} line {number}: field {name!r} is {type(obj[name]).__name__} ({obj[name]!r:.40}), expected a string (use \"\" for an empty answer)"
                )
        rows.append(obj if whole else {name: obj[name] for name in REQUIRED_FIELDS})
    if not rows:
        raise PredictionFileError(f"{path}: no predictions (the file is empty); each line must be one JSON object with {', '.join(REQUIRED_FIELDS)}")
    return rows


def system_name(path: str | Path) -> str:
    return Path(path).stem


def find_baseline(names: Sequence[str], baseline: str) -> str | None:
    """The system named `baseline`, or `baseline` plus a split suffix (rag_vanilla_test)."""
    if baseline in names:
        return baseline
    matches = [name for name in names if any(name == baseline + suffix for suffix in SPLIT_SUFFIXES)]
    return matches[0] if len(matches) == 1 else None


def align(system: Any, baseline: Any) -> tuple[Any, Any] | None:
    """Both AnswerScores on the questions they share, in the baseline's order; None when a
    question repeats (pairing would be ambiguous) or none is shared."""
    if system.questions == baseline.questions:
        return system, baseline
    if len(set(system.questions)) != system.n or len(set(baseline.questions)) != baseline.n:
        return None
    position = {question: i for i, question in enumerate(system.questions)}
    shared = [i for i, question in enumerate(baseline.questions) if question in position]
    if not shared:
        return None
    return system.subset([position[baseline.questions[i]] for i in shared]), baseline.subset(shared)


def score_files(
    paths: Sequence[str | Path],
    config: Config,
    *,
    baseline_required: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every file; the result is what `--format json` prints."""
    from tqdm.auto import tqdm


    settings = config.eval
    names = [system_name(p) for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PredictionFileError(f"several files share the name(s) {', '.join(duplicates)}; systems are named by file stem, rename one")
    rows_by_system = {name: read_predictions(path) for name, path in zip(names, paths)}  # fail before any model loads
    baseline = find_baseline(names, settings.baseline)
    if baseline is None and baseline_required:
        raise PredictionFileError(f"--baseline {settings.baseline!r} matches none of the files ({', '.join(names)})")

    scorer = None
    if settings.bertscore:
        scorer = BertScoreModel.from_config(config)
        scorer.resolved  # find the model (or fall back, saying so) now: fail before any scoring
    scores = {}
    for name in tqdm(names, desc="scoring", unit="file", disable=not progress or len(names) < 2):
        rows = rows_by_system[name]
        scores[name] = compute_answer_scores(
            [r["prediction"] for r in rows], [r["reference"] for r in rows], bertscore=scorer, questions=[r["question"] for r in rows]
        )
    systems = {name: s.summary(samples=settings.bootstrap_samples, seed=settings.seed) for name, s in scores.items()}
    result: dict[str, Any] = {
        "model_for_bertscore": scorer.model_for_bertscore if scorer else None,
        "bertscore": scorer.info() if scorer else None,
        "bootstrap": {"samples": settings.bootstrap_samples, "seed": settings.seed, "confidence": 0.95},
        "baseline": baseline,
        "files": {name: str(path) for name, path in zip(names, paths)},
        "systems": systems,
    }
    if baseline is not None:
        for name, system_scores in scores.items():
            if name == baseline:
                continue
            aligned = align(system_scores, scores[baseline])
            if aligned is None:
                systems[name]["vs_baseline"] = None
                print(f"note: {name} shares no unambiguous questions with {baseline}; no paired test", file=sys.stderr)
                continue
            tests = paired_answer_tests(*aligned, samples=settings.bootstrap_samples, seed=settings.seed)
            systems[name]["vs_baseline"] = {"baseline": baseline, "n_paired": aligned[0].n, **tests}
    return result


def render_markdown(result: dict[str, Any]) -> str:
    text = render_table(result["systems"], model_for_bertscore=result["model_for_bertscore"], bertscore_info=result["bertscore"])
    baseline = result.get("baseline")
    if baseline:
        tests = {
            name: {k: v for k, v in row["vs_baseline"].items() if isinstance(v, dict)}
            for name, row in result["systems"].items()
            if row.get("vs_baseline")
        }
        text += "\n" + render_paired_tests(tests, baseline)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.score",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="Prediction files (.jsonl: question, prediction, reference per line); each is one system named by its file stem.")
    add_io_arguments(parser, formats="Output on stdout: a markdown table (md, default) or the full results as JSON.", out="Also write scores.json, scores.md and the resolved config to DIR.", out_metavar="DIR")
    parser.add_argument("--bertscore-model", metavar="M", help="BERTScore model (hub id or folder). Naming one turns the MiniLM fallback off: it must load. Default: eval.bertscore_model of the profile (roberta-large unless the profile names another; the bundled MiniLM when it is not on this machine).")
    parser.add_argument("--no-bertscore", action="store_true", help="Skip BERTScore (no model is loaded).")
    parser.add_argument("--baseline", metavar="STEM", help="File stem every other system is paired-tested against; a _test/_val/_train suffix may be left out. Default: eval.baseline (rag_vanilla); skipped when no file matches the default.")
    parser.add_argument("--samples", type=int, metavar="N", help="Bootstrap resamples for intervals and paired tests. Default: eval.bootstrap_samples (1000).")
    parser.add_argument("--seed", type=int, metavar="S", help="Seed of the bootstrap. Default: eval.seed (42).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    add_config_arguments(parser)
    return parser


def _overrides_from_flags(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.bertscore_model is not None:
        overrides += [f"eval.bertscore_model={json.dumps(args.bertscore_model)}", "eval.bertscore_fallback=false"]
    if args.no_bertscore:
        overrides.append("eval.bertscore=false")
    if args.baseline is not None:
        overrides.append(f"eval.baseline={json.dumps(args.baseline)}")
    if args.samples is not None:
        overrides.append(f"eval.bootstrap_samples={args.samples}")
    if args.seed is not None:
        overrides.append(f"eval.seed={args.seed}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> None:
        config = config_from_args(args, _overrides_from_flags(args))
        result = score_files(args.files, config, baseline_required=args.baseline is not None, progress=not args.no_progress)
        markdown = render_markdown(result)
        if args.out:
            out = Path(args.out)
            write_json(out / "scores.json", result)
            atomic_write_text(out / "scores.md", markdown)
            save_resolved_config(config, out, extra={"kind": "scores", "files": result["files"]})
        print(json.dumps(result, indent=2) if args.format == "json" else markdown, end="" if args.format == "md" else "\n")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
