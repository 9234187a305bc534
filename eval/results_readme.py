"""`python -m eval.results_readme`: a results folder's README from its runs' own JSON.

    python -m eval.results_readme results/answerability/dev.json results/answerability/test.json --title "answerability" --out results/answerability/README.md

For each run, in the order given: the exact command, the git revision and the wall time it
recorded, then its table, rendered by the command that made it (eval.answerability,
eval.documents, eval.grounding; an `eval.answerability --predictions` report). Tables in the
README and the docs are copied from these files, never typed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.errors import run_cli
from pipeline.fileio import atomic_write_text


def _refusal_report(result: Mapping[str, Any]) -> str:
    change = result["rougeL_change"]
    return (
        f"What the calibrated grade would refuse among `{result['predictions']}`: {result['refused']} of {result['questions']} "
        f"({result['refused_rate']:.3f}); ROUGE-L {result['rougeL_answered']:.4f} as answered, {result['rougeL_with_refusals']:.4f} with those answers "
        f"replaced by the refusal: {change['diff']:+.4f} [{change['ci95_low']:+.4f}, {change['ci95_high']:+.4f}]."
    )


def _renderer(result: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], str]:
    """The table renderer of the command that wrote `result`, told apart by its own keys."""
    if "refused_rate" in result:
        return _refusal_report
    if "answered" in result and "quoted" in result:  # eval.grounding --predictions
        from eval.grounding import to_markdown

        return to_markdown
    if "evaluation" in result and "calibration" in result:
        from eval.answerability.benchmark import to_markdown

        return to_markdown
    if "document" in result:
        from eval.documents.benchmark import to_markdown

        return to_markdown
    if "settings" in result and all("supported" in s for s in result["settings"].values()):
        from eval.grounding import to_markdown

        return to_markdown
    raise ValueError("not a run of eval.answerability, eval.documents or eval.grounding: none of their keys")


def _ci(value: float, ci: Sequence[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def trust_headline(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The front page's short table of what the trust benchmarks measured: refusals (an
    answerability run), the document benchmark's hit@3 and support, the support of `full`'s
    answers per copy bias (a grounding run); one row per figure, with the file it comes from."""
    rows = []
    for name, result in runs:
        _renderer(result)  # not a run of these commands: the error names them
        if "evaluation" in result and "calibration" in result:
            refusal = result["evaluation"]["refusal"]
            for group, label in (("far", "out-of-KB, far from the corpus: declined"), ("near", "out-of-KB, near it (other tech): declined"), ("in-KB", "in-KB: declined")):
                if group in refusal:
                    rows.append((f"{label} ({result['split']}, {refusal[group]['n']})", _ci(refusal[group]["rate"], refusal[group]["ci95"]), name))
            rows.append((f"grade's calibration error ({result['split']})", f"ECE {result['evaluation']['ece']:.3f}", name))
        elif "document" in result:
            for system, summary in result["systems"].items():
                if system != "full" and "full" in result["systems"]:
                    continue  # the front page shows `full`; the folder's README has every system
                rows.append((f"documents ({result['split']}, {result['questions']}): `{system}` has the answer in its top 3", _ci(summary["hit@3"], summary["ci95"]["hit@3"]), name))
                if "supported" in summary:
                    rows.append((f"documents: `{system}`'s answers supported", _ci(summary["supported"], summary["ci95"]["supported"]), name))
        elif "answered" in result and "quoted" in result:  # answers as given (eval.grounding --predictions)
            system = Path(result["predictions"]).stem
            rows.append((f"seed: `{system}`'s answers supported as given ({result['answered']} answered, {result['quoted']} of them quoted, {result['declined']} declined; ROUGE-L {result['rougeL']:.4f})", _ci(result["supported"], result["ci95"]["supported"]), name))
        elif "settings" in result:  # a grounding run (a refusal report adds no row)
            settings = list(result["settings"].items())
            best = max(settings, key=lambda item: item[1]["supported"])
            for bias, summary in [settings[0]] + ([best] if best[0] != settings[0][0] else []):  # the reference and the most supported
                rows.append((f"seed {result['split']}: `full`'s answers supported, copy_bias {bias} (ROUGE-L {summary['rougeL']:.4f})", _ci(summary["supported"], summary["ci95"]["supported"]), name))
    lines = ["| measured | value [95% interval] | run |", "|---|---:|---|"]
    lines += [f"| {what} | {value} | `{name}` |" for what, value, name in rows]
    return "\n".join(lines)


def readme(runs: Sequence[tuple[str, Mapping[str, Any]]], *, title: str) -> str:
    from eval.realistic.benchmark import run_lines

    lines = [f"# {title}", "", "Generated by `python -m eval.results_readme` from the runs' own JSON; do not edit by hand."]
    for name, result in runs:
        lines += ["", f"## `{name}`", "", *run_lines(result), "", _renderer(result)(result)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.results_readme", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN.json", help="The runs' JSON files (--out of each command), in the order to show them.")
    parser.add_argument("--title", required=True, help="The README's title.")
    parser.add_argument("--out", required=True, metavar="README.md", help="Where to write it.")
    parser.add_argument("--readme-block", metavar="FILE", help="Also fill the block <!-- results:trust-headline:start/end --> of FILE (the front page) with the runs' headline figures.")
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.data import DataError

        runs = []
        for path in args.runs:
            try:
                runs.append((f"{Path(path).parent.name}/{Path(path).name}", json.loads(Path(path).read_text(encoding="utf-8"))))
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not a readable run file ({error}); give the JSON a command wrote with --out") from error
        try:
            text = readme(runs, title=args.title)
        except ValueError as error:
            raise DataError(str(error)) from error
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out} ({len(runs)} runs)")
        if args.readme_block:
            from eval.publish import has_block, replace_block

            page = Path(args.readme_block)
            current = page.read_text(encoding="utf-8")
            if not has_block(current, "trust-headline"):
                raise DataError(f"{page} has no block <!-- results:trust-headline:start --> ... <!-- results:trust-headline:end -->; add the two markers where the table goes")
            atomic_write_text(page, replace_block(current, "trust-headline", trust_headline(runs)))
            print(f"filled the trust-headline block of {page}")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
