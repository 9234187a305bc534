"""Publish an `eval.compare` run under results/ and regenerate the README's results table from it.

    python -m eval.publish runs/smollm2/data/splits-567263a4/compare --out results/seed \\
        --command "python -m eval.compare --data ../shared/data/seed-technical-qa/splits --split test"
    python -m eval.publish --readme-only --out results/seed       # only regenerate the tables (README.md's blocks, results/seed/README.md)

Copies what a reader needs and nothing that is a cache or a model: metrics.json, report.md, the
plots (metrics.png, latency.png) and predictions/<system>.jsonl with their .done.json markers. It
writes `<out>/README.md` with the exact command, the git revision, the wall time of every build and
every system (from the build plan, the artifacts' train reports and the done markers), and the
table, followed by every retrieval run kept there (`eval.retrieval --out <out>/retrieval-*.json`,
`rerank.evaluate --out <out>/rerankers-*.json`, `finetune.rewriter --report <out>/rewriters-*.json`;
each records its command, revision and wall time in the JSON). The project README's block between
`<!-- results:<name>:start -->` and `<!-- results:<name>:end -->` (name = the folder's name) is
replaced by the same table, a block `<name>-headline` by a short table of the main systems
(`headline_table`), a block `<name>-retrieval` by the reranker and rewriter tables, and a block
`<!-- systems:start -->` ... `<!-- systems:end -->` by the table of the named systems as the default
profile resolves them (`systems_table`), so the README's numbers and its description of the systems
are always the committed ones and the code's (tests/eval/test_publish.py checks both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from eval.compare import render_report
from eval.report import format_value
from eval.retrieval import to_markdown
from pipeline.cli import add_io_arguments, git_revision
from pipeline.config import load_config
from pipeline.errors import UserFacingError, run_cli
from pipeline.fileio import atomic_write_text
from pipeline.systems import SYSTEMS, get_system, uses_finetuned_embedder

if TYPE_CHECKING:
    from pipeline.config import Config

COPIED = ("metrics.json", "report.md", "metrics.png", "latency.png")
# the rows of the README's headline table (`<name>-headline` block), in this order
HEADLINE_SYSTEMS = ("vanilla", "rag_vanilla", "finetuned", "rag_finetuned", "nn_answer", "full")
SYSTEMS_BLOCK = ("<!-- systems:start -->", "<!-- systems:end -->")


class PublishError(UserFacingError, ValueError):
    """The folder to publish is not a finished eval.compare run."""


def results_table(metrics: dict[str, Any]) -> str:
    """The comparison table of a metrics.json, as eval.compare prints it."""
    _, summary = render_report(metrics)
    # the summary is: a header line, the table, then the paired tests; keep the first two
    blocks = summary.split("\n\n")
    return "\n\n".join(blocks[:2]).strip() + "\n"


def build_times(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(artifact, action, seconds) per build step: measured in this run, else the artifact's own
    train report (a resumed run reuses what an earlier invocation built)."""
    rows = []
    for step in metrics.get("plan", []):
        seconds = step.get("seconds")
        how = step["action"]
        if seconds is None:
            # the generators write train_report.json, the reranker train_log.json
            for name in ("train_report.json", "train_log.json"):
                report = Path(step["path"]) / name
                if report.is_file():
                    recorded = json.loads(report.read_text(encoding="utf-8")).get("seconds")
                    seconds = recorded.get("total") if isinstance(recorded, dict) else recorded
                    how += f" (built earlier; seconds from its {name})"
                    break
        rows.append((step["artifact"], how, "–" if seconds is None else f"{float(seconds):.0f}"))
    return rows


def system_times(compare_dir: Path, systems: Sequence[str]) -> list[tuple[str, str, str]]:
    rows = []
    for name in systems:
        marker = compare_dir / "predictions" / f"{name}.done.json"
        done = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
        rows.append((name, str(done.get("n", "–")), f"{done['seconds']:.0f}" if "seconds" in done else "–"))
    return rows


def retrieval_sections(out: Path, kinds: Sequence[str] = ("retrieval", "rerankers", "rewriters"), *, level: int = 2) -> list[str]:
    """README lines for the retrieval runs kept beside the comparison (`eval.retrieval --out
    <out>/retrieval-*.json`, `rerank.evaluate --out <out>/rerankers-*.json`, `finetune.rewriter
    --report <out>/rewriters-*.json`): each one's command, revision, wall time and table (from the
    JSON itself), under headings of `level`."""
    from finetune.rewriter import rewriters_markdown
    from rerank.evaluate import grid_markdown

    render = {"retrieval": ("eval.retrieval", to_markdown), "rerankers": ("rerank.evaluate", grid_markdown), "rewriters": ("finetune.rewriter", rewriters_markdown)}
    lines: list[str] = []
    for path in [p for kind in kinds for p in sorted(out.glob(f"{kind}-*.json"))]:
        command, markdown = render[path.name.split("-", 1)[0]]
        result = json.loads(path.read_text(encoding="utf-8"))
        run = result.get("run", {})
        lines += [
            f"{'#' * level} {path.name}: `{command}`, {result['protocol']}, {result['split']} split",
            "",
            "```bash",
            run.get("command", "(command not recorded: written before eval.retrieval recorded it)"),
            "```",
            "",
            f"- git revision: `{run.get('git_revision', 'unknown')}`; wall time {run.get('seconds', '–')} s",
            "",
            markdown(result).replace("### ", "#" * (level + 1) + " ", 1),
            "",
        ]
    return lines


def headline_table(metrics: dict[str, Any], link: str) -> str:
    """The README's short results table: ROUGE-L, BLEU-4 (with their 95% intervals) and p50
    latency of the HEADLINE_SYSTEMS a metrics.json holds, and a link to the folder with the rest."""
    data = metrics["data"]
    lines = [
        f"`{data['split']}` split of `{data['dir']}` ({data['n']} questions), profile `{metrics['profile']}`; "
        f"value [95% bootstrap interval]. Every system, the ablations, the paired tests and the build times: [{link}/]({link}/).",
        "",
        "| system | ROUGE-L | BLEU-4 | p50 latency (s) |",
        "|---|---:|---:|---:|",
    ]
    for name in HEADLINE_SYSTEMS:
        row = metrics["systems"].get(name)
        if row is None:
            continue
        ci = row.get("ci95") or {}
        p50 = (row.get("latency") or {}).get("p50_s")
        lines.append(f"| `{name}` | {format_value(row.get('rougeL'), ci.get('rougeL'))} | {format_value(row.get('bleu4'), ci.get('bleu4'))} | {'–' if p50 is None else f'{p50:.3f}'} |")
    return "\n".join(lines) + "\n"


def _system_cells(name: str, config: "Config") -> list[str]:
    """What system `name` runs under `config`: rewrite, retrieval, rerank, generator, agent."""
    spec = get_system(name, config)
    if not spec.rewrite:
        rewrite = "-"
    elif config.rewrite.mode == "none":
        rewrite = "off (`rewrite.mode: none`)"
    elif config.rewrite.mode == "condense":
        rewrite = "`condense`, " + ("trained" if spec.rewriter_adapter and config.rewrite.condense_adapter else "base LM")
    else:
        rewrite = f"`{config.rewrite.mode}`, " + ("LoRA rewriter" if spec.rewriter_adapter and config.rewrite.adapter else "base LM")
    passages = spec.top_k or (config.rerank.top_n if spec.rerank else config.generator.context_top_k)
    if spec.retrieve is None:
        retrieval = "-"
    else:
        retrieval = f"{spec.retrieve} top-{max(config.rerank.candidates, passages) if spec.rerank else passages}"
        if uses_finetuned_embedder(config, spec):
            retrieval += ", fine-tuned embedder"
    if spec.rerank:
        kind = "query-likelihood LoRA" if config.rerank.kind == "query-likelihood" else "cross-encoder"
        rerank = f"{kind}, w {config.rerank.retrieval_weight:g} -> top {passages}"
    else:
        rerank = "-"
    generator = {None: "none: the top passage's answer", "base": "base LM", "plain": "LoRA, question -> answer", "raft": f"LoRA RAFT ({config.finetune.raft.context})"}[spec.generator]
    if spec.generator == "raft" and config.generator.copy_bias:
        generator += f", copy bias {config.generator.copy_bias:g}"
    if spec.full_family and spec.retrieve is not None and spec.generator is not None and config.generator.on_unsupported == "quote":
        from pipeline.support import quote_threshold

        generator += f", quotes < {quote_threshold(config):g}"
    if not spec.agent:
        agent = "-"
    elif not spec.rerank:
        agent = "no score: accepts round 1"
    elif config.agent.calibration:
        after = f"{config.agent.max_rounds - 1} {'/'.join(config.agent.retry_modes)} retry, then " if config.agent.max_rounds > 1 and config.agent.retry_modes else ""
        agent = f"calibrated grade: {after}{'refuses' if config.agent.on_weak == 'not_found' else 'flags'} below it"
    elif config.agent.grade_threshold <= 0:
        agent = f"`grade_threshold: {config.agent.grade_threshold}`: accepts round 1"
    else:
        agent = f"retries below {config.agent.grade_threshold} ({'/'.join(config.agent.retry_modes)}), {config.agent.max_rounds} rounds at most, then {config.agent.on_weak}"
    return [rewrite, retrieval, rerank, generator, agent]


def systems_table(config: "Config") -> str:
    """The README's table of the named systems (pipeline/systems.py) as `config` resolves them:
    one row per system; an ablation that runs what `full` runs under it is marked so."""
    full = _system_cells("full", config)
    lines = [
        f"Under the profile `{config.profile}`: LM `{config.generator.model}`, embedder `{config.index.embed_model}`.",
        "",
        "| system | rewrite | retrieval | rerank | generator | agent |",
        "|---|---|---|---|---|---|",
    ]
    for name in SYSTEMS:
        cells = _system_cells(name, config)
        label = f"`{name}`" + (" (= `full` here)" if name.startswith("full-") and cells == full else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise PublishError(f"README has no block {start} ... {end}; add those two lines where the table belongs")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.rstrip()}\n{end}{tail}"


def replace_block(text: str, name: str, body: str) -> str:
    return _replace_between(text, f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->", body)


def has_block(text: str, name: str) -> bool:
    return f"<!-- results:{name}:start -->" in text and f"<!-- results:{name}:end -->" in text


def block_body(text: str, start: str, end: str) -> str:
    """What lies between two markers (a generated block), without the newlines next to them."""
    if start not in text or end not in text:
        raise PublishError(f"README has no block {start} ... {end}")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def update_readme(text: str, out: Path, metrics: dict[str, Any], *, link: str) -> str:
    """`text` (the project README) with every generated block it holds regenerated: the results
    table `<name>` and/or the headline `<name>-headline` (name = out's folder name; at least one
    of them), the retrieval tables `<name>-retrieval`, and the systems table."""
    name = out.name
    if not (has_block(text, name) or has_block(text, f"{name}-headline")):
        raise PublishError(f"README has no block <!-- results:{name}-headline:start --> ... <!-- results:{name}-headline:end --> (or <!-- results:{name}:start --> ... for the whole table); add those two lines where the table belongs")
    if has_block(text, name):
        text = replace_block(text, name, results_table(metrics))
    if has_block(text, f"{name}-headline"):
        text = replace_block(text, f"{name}-headline", headline_table(metrics, link))
    if has_block(text, f"{name}-retrieval"):  # the reranker and rewriter tables of the fine-tuned-for-retrieval parts
        text = replace_block(text, f"{name}-retrieval", "\n".join(retrieval_sections(out, ("rerankers", "rewriters"), level=4)))
    if SYSTEMS_BLOCK[0] in text:
        text = _replace_between(text, *SYSTEMS_BLOCK, systems_table(load_config()))
    return text


def readme_link(out: Path, readme: Path) -> str:
    """The results folder as the README links it: relative to the README's folder."""
    return Path(os.path.relpath(Path(out).resolve(), Path(readme).resolve().parent)).as_posix()


def publish(compare_dir: Path | None, out: Path, *, command: str, readme: Path | None, repo: Path) -> Path:
    if compare_dir is not None:
        metrics_path = compare_dir / "metrics.json"
        if not metrics_path.is_file():
            raise PublishError(f"{compare_dir} has no metrics.json: it is not a finished eval.compare run (run eval.compare to the end first)")
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        systems = list(metrics["systems"])
        missing = [s for s in systems if not (compare_dir / "predictions" / f"{s}.jsonl").is_file()]
        if missing:
            raise PublishError(f"{compare_dir} lacks predictions for {', '.join(missing)}")
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (compare_dir / name).is_file():
                shutil.copy2(compare_dir / name, out / name)
        for name in systems:
            for suffix in (".jsonl", ".done.json"):
                source = compare_dir / "predictions" / f"{name}{suffix}"
                if source.is_file():
                    shutil.copy2(source, out / "predictions" / source.name)
        table = results_table(metrics)
        lines = [
            f"# {out.name}: `eval.compare` on the {metrics['data']['split']} split ({metrics['data']['n']} questions)",
            "",
            "Generated by `python -m eval.publish` from the run's own files; do not edit by hand.",
            "",
            "```bash",
            command,
            f"python -m eval.publish {compare_dir} --out {out} --command {json.dumps(command)}",
            "```",
            "",
            f"- git revision: `{git_revision(repo)}`",
            f"- profile: `{metrics['profile']}`; data: `{metrics['data']['dir']}` (content hash {metrics['data']['sha'][:12]}); finished {metrics['finished']}",
            f"- BERTScore model: {metrics.get('model_for_bertscore')}",
            "",
            table,
            "Full report with the paired tests and what each system is: [report.md](report.md). Plots: `metrics.png`, `latency.png`.",
            "",
            "## Wall times (2 CPU cores)",
            "",
            "| build step | action | seconds |",
            "|---|---|---:|",
            *(f"| {a} | {b} | {c} |" for a, b, c in build_times(metrics)),
            "",
            "| system | questions | seconds (generation + retrieval, this run's share) |",
            "|---|---:|---:|",
            *(f"| {a} | {b} | {c} |" for a, b, c in system_times(compare_dir, systems)),
            "",
        ]
        lines += retrieval_sections(out)
        atomic_write_text(out / "README.md", "\n".join(lines))
        # the predictions folder is read on its own too: it says where its files came from
        atomic_write_text(out / "predictions" / "README.md", "\n".join([
            f"# {out.name}/predictions: one JSONL per system (question, prediction, reference, sources, trace, timings) and its .done.json marker",
            "",
            "```bash", command, "```", "",
            f"- git revision: `{git_revision(repo)}`; written by `python -m eval.publish` (see ../README.md for the table and the build times)",
            "",
            "| system | questions | seconds |", "|---|---:|---:|",
            *(f"| {a} | {b} | {c} |" for a, b, c in system_times(compare_dir, systems)),
            "",
        ]))
    elif (out / "README.md").is_file():
        # --readme-only: the run's page keeps its head and gets the retrieval runs kept beside it now
        page = (out / "README.md").read_text(encoding="utf-8")
        head = re.split(r"\n## (?:retrieval|rerankers|rewriters)-[^\n]*\.json: ", page, maxsplit=1)[0].rstrip("\n")
        atomic_write_text(out / "README.md", "\n".join([head, "", *retrieval_sections(out)]))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    if readme is not None:
        atomic_write_text(readme, update_readme(readme.read_text(encoding="utf-8"), out, metrics, link=readme_link(out, readme)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.publish", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_dir", nargs="?", type=Path, help="The eval.compare output folder (its --out, default {run_dir}/compare).")
    add_io_arguments(parser, out="Folder under results/ to write, e.g. results/seed.", out_metavar="DIR", out_required=True)
    parser.add_argument("--command", default="python -m eval.compare", help="The exact eval.compare command of the run, recorded in the README.")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="Project README whose generated blocks (results, headline, retrieval, systems) are regenerated (default README.md).")
    parser.add_argument("--readme-only", action="store_true", help="Only regenerate the README's generated blocks from <out>/metrics.json, the retrieval runs kept in <out> (retrieval-*, rerankers-*, rewriters-*.json) and the default profile, and those runs' sections of <out>/README.md.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        if not args.readme_only and args.compare_dir is None:
            raise PublishError("name the eval.compare output folder to publish, or pass --readme-only")
        out = publish(None if args.readme_only else args.compare_dir, Path(args.out), command=args.command, readme=args.readme, repo=Path.cwd())
        print(f"wrote {out} and the generated blocks in {args.readme}")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
