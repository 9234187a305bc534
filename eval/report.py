"""Reports: one markdown table of every system with confidence intervals, paired tests, plots.

    from eval.report import render_table, plot_metrics, plot_latency
    print(render_table({"rag_vanilla": score_predictions(preds, refs)}))
    plot_metrics(metrics_by_system, "runs/default/compare/metrics.png")
    plot_latency({"full": latency_summary(timings)}, "runs/default/compare/latency.png")

A system's entry is the dict of `eval.metrics.score_predictions` / `AnswerScores.summary` (metric
values, "n", "ci95", "model_for_bertscore"), optionally with
- "retrieval": a `pipeline.metrics.summarize` dict of retrieval metrics ("recall@5", "mrr@10", "ci95");
- "latency": an `eval.metrics.latency_summary` dict ("p50_s", "stages").
Columns for retrieval and latency appear when any row has them; other rows show "–".

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so
they work headless and inside other programs (the Streamlit UI) alike. Files are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

METRIC_LABELS = {
    "bleu4": "BLEU-4",
    "rougeL": "ROUGE-L",
    "bertscore_f1": "BERTScore F1",
    "exact_match": "EM",
    "exact_match_squad": "EM (SQuAD)",
    "token_f1": "token F1",
}
DEFAULT_TABLE_METRICS = ("bleu4", "rougeL", "bertscore_f1", "exact_match", "token_f1")
RETRIEVAL_COLUMNS = (("recall@5", "R@5"), ("mrr@10", "MRR@10"))
MISSING = "–"


def format_value(value: float | None, ci: Sequence[float] | None = None, *, digits: int = 4) -> str:
    """`0.0515 [0.0438, 0.0591]`, or the bare value without an interval, or "–" when missing."""
    if value is None:
        return MISSING
    text = f"{value:.{digits}f}"
    if ci is not None and len(ci) == 2:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def bertscore_header(model_for_bertscore: str | None, info: Mapping[str, Any] | None = None) -> str:
    """The line naming the BERTScore model, with its layer and any fallback."""
    if model_for_bertscore is None:
        return "BERTScore: not computed."
    text = f"BERTScore model: `{model_for_bertscore}`"
    details = []
    if info and info.get("layer") is not None:
        details.append(f"layer {info['layer']}")
    details.append("no baseline rescale")
    text += f" ({', '.join(details)})"
    if info and info.get("fallback_reason"):
        text += f"; `{info.get('requested')}` was requested but {info['fallback_reason']}"
    return text + "."


def _models_used(rows: Mapping[str, Mapping[str, Any]]) -> set[str]:
    return {row["model_for_bertscore"] for row in rows.values() if row.get("model_for_bertscore")}


def _check_rows(name: str, rows: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    if rows is None:
        return {}
    if not isinstance(rows, Mapping):
        raise TypeError(f"{name} must map system name -> metrics dict; got {type(rows).__name__}")
    for system, row in rows.items():
        if not isinstance(row, Mapping):
            raise TypeError(f"{name}[{system!r}] must be a metrics dict (from score_predictions); got {type(row).__name__}")
    return dict(rows)


def _cell(row: Mapping[str, Any], metric: str, digits: int) -> str:
    value = row.get(metric)
    return format_value(None if value is None else float(value), (row.get("ci95") or {}).get(metric), digits=digits)


def render_table(
    metrics_by_system: Mapping[str, Mapping[str, Any]],
    *,
    model_for_bertscore: str | None = None,
    bertscore_info: Mapping[str, Any] | None = None,
    metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
    reference_rows: Mapping[str, Mapping[str, Any]] | None = None,
    reference_label: str = "reference",
    retrieval: bool | None = None,
    latency: bool | None = None,
    digits: int = 4,
    title: str | None = None,
) -> str:
    """One markdown table: a row per system (then the labelled reference rows), a column per
    metric with `value [low, high]` cells (bootstrap 95%), a header line naming the BERTScore model.

    `retrieval` / `latency`: show R@5 and MRR@10 / p50 latency columns; None shows them when any
    row has the data. Metrics no row has (BERTScore when skipped) are left out. Rows scored with
    different BERTScore models cannot share a column, so that is an error."""
    ours = _check_rows("metrics_by_system", metrics_by_system)
    references = _check_rows("reference_rows", reference_rows)
    if not ours and not references:
        raise ValueError("render_table needs at least one system's metrics")
    rows = [(name, row) for name, row in ours.items()] + [(f"{name} ({reference_label})", row) for name, row in references.items()]
    used = _models_used({**{f"ours:{k}": v for k, v in ours.items()}, **{f"ref:{k}": v for k, v in references.items()}})
    if model_for_bertscore is not None:
        used.add(model_for_bertscore)
    if len(used) > 1:
        raise ValueError(f"rows were scored with different BERTScore models ({', '.join(sorted(used))}); rescore them with one model")
    model = next(iter(used), None)
    if model is None:
        metrics = [m for m in metrics if m != "bertscore_f1"]
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(f"unknown metric column(s) {unknown}; choose from {', '.join(METRIC_LABELS)}")
    metrics = [m for m in metrics if any(row.get(m) is not None for _, row in rows)]
    show_retrieval = any(row.get("retrieval") for _, row in rows) if retrieval is None else retrieval
    show_latency = any(row.get("latency") for _, row in rows) if latency is None else latency

    header = ["system", *(METRIC_LABELS[m] for m in metrics)]
    if show_retrieval:
        header += [label for _, label in RETRIEVAL_COLUMNS]
    if show_latency:
        header.append("p50 latency (s)")
    header.append("n")
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [bertscore_header(model, bertscore_info) + " Cells: value [95% bootstrap interval over questions].", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name, row in rows:
        cells = [name, *(_cell(row, m, digits) for m in metrics)]
        if show_retrieval:
            found = row.get("retrieval") or {}
            cells += [_cell(found, key, digits) if found else MISSING for key, _ in RETRIEVAL_COLUMNS]
        if show_latency:
            found = row.get("latency") or {}
            cells.append(format_value(found.get("p50_s"), digits=3) if found else MISSING)
        cells.append(str(row.get("n", MISSING)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_paired_tests(
    tests_by_system: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    *,
    metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
    digits: int = 4,
) -> str:
    """Markdown table of paired bootstrap tests (system - baseline): `diff [low, high] (p=...)`."""
    if not tests_by_system:
        return f"No paired tests: no system other than `{baseline}` shares its questions.\n"
    metrics = [m for m in metrics if any(m in tests for tests in tests_by_system.values())]
    lines = [
        f"Paired bootstrap vs `{baseline}` on the same questions: difference [95% interval] (two-sided p; "
        "p=0.000 means no resample crossed zero).",
        "",
        "| system | " + " | ".join(f"Δ {METRIC_LABELS.get(m, m)}" for m in metrics) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|",
    ]
    for system, tests in tests_by_system.items():
        cells = []
        for m in metrics:
            test = tests.get(m)
            if test is None:
                cells.append(MISSING)
                continue
            cells.append(f"{test['diff']:+.{digits}f} [{test['ci95_low']:+.{digits}f}, {test['ci95_high']:+.{digits}f}] (p={test['p_value']:.3f})")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Any, path: str | Path) -> Path:
    """Render to a temporary file beside `path`, then rename: never a half-written PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path {path} must end with .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_metrics(
    metrics_by_system: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
    reference_rows: Mapping[str, Mapping[str, Any]] | None = None,
    reference_label: str = "reference",
    model_for_bertscore: str | None = None,
    title: str | None = None,
) -> Path:
    """A PNG with one panel per metric (their scales differ: BLEU-4 ~0.05, BERTScore ~0.9), a bar
    per system, whiskers from the 95% interval; reference rows hatched and labelled."""
    ours = _check_rows("metrics_by_system", metrics_by_system)
    references = _check_rows("reference_rows", reference_rows)
    bars = [(name, row, False) for name, row in ours.items()] + [(f"{name} ({reference_label})", row, True) for name, row in references.items()]
    if not bars:
        raise ValueError("plot_metrics needs at least one system's metrics")
    panels = [m for m in metrics if any(row.get(m) is not None for _, row, _ in bars)]
    if not panels:
        raise ValueError(f"no system has any of the metrics {list(metrics)}")
    model = model_for_bertscore or next(iter(_models_used({str(i): row for i, (_, row, _) in enumerate(bars)})), None)

    columns = min(3, len(panels))
    rows_count = (len(panels) + columns - 1) // columns
    figure = _new_figure(4.2 * columns, 0.35 * len(bars) + 2.6 * rows_count)
    # One color per system name: our row and the reference row of the same system match.
    palette: dict[str, str] = {}
    for name in [*ours, *references]:
        palette.setdefault(name, f"C{len(palette) % 10}")
    colors = [palette[name] for name in [*ours, *references]]
    for panel, metric in enumerate(panels):
        axes = figure.add_subplot(rows_count, columns, panel + 1)
        positions, heights, lower, upper = [], [], [], []
        for i, (_, row, _) in enumerate(bars):
            value = row.get(metric)
            positions.append(i)
            heights.append(0.0 if value is None else float(value))
            ci = (row.get("ci95") or {}).get(metric)
            lower.append(max(0.0, heights[-1] - ci[0]) if ci and value is not None else 0.0)
            upper.append(max(0.0, ci[1] - heights[-1]) if ci and value is not None else 0.0)
        drawn = axes.barh(positions, heights, xerr=[lower, upper], color=colors, capsize=3, edgecolor="black", linewidth=0.5)
        for patch, (_, row, is_reference) in zip(drawn, bars):
            if is_reference:
                patch.set_hatch("//")
                patch.set_alpha(0.6)
            if row.get(metric) is None:
                patch.set_visible(False)
        if min(heights) >= 0:
            axes.set_xlim(left=0)  # scores are non-negative: no empty negative half (EM all 0)
        axes.set_yticks(positions)
        axes.set_yticklabels([name for name, _, _ in bars] if panel % columns == 0 else [], fontsize=8)
        axes.invert_yaxis()
        label = METRIC_LABELS.get(metric, metric)
        if metric == "bertscore_f1" and model:
            label += f"\n({model.split('/')[-1]})"
        axes.set_title(label, fontsize=9)
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title or "Answer metrics per system (whiskers: 95% bootstrap interval)", fontsize=10)
    figure.tight_layout()
    return _save_png(figure, path)


def plot_latency(
    latency_by_system: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    statistic: str = "mean_s",
    title: str | None = None,
) -> Path:
    """A PNG of seconds per question per stage (stacked bars, one per system) from
    `eval.metrics.latency_summary` dicts; the p50 total is marked on each bar."""
    if statistic not in ("mean_s", "p50_s"):
        raise ValueError(f"plot_latency(statistic={statistic!r}): use 'mean_s' or 'p50_s'")
    if not latency_by_system:
        raise ValueError("plot_latency needs at least one system's latency summary")
    for system, summary in latency_by_system.items():
        if not isinstance(summary, Mapping) or "stages" not in summary:
            raise TypeError(f"latency of {system!r} must be an eval.metrics.latency_summary dict (with 'stages')")
    # Stage order from the system with the most stages first: its timings follow the pipeline order.
    stages: list[str] = []
    for summary in sorted(latency_by_system.values(), key=lambda s: -len(s["stages"])):
        for stage in summary["stages"]:
            if stage not in stages:
                stages.append(stage)
    systems = list(latency_by_system)
    figure = _new_figure(7.5, 0.45 * len(systems) + 1.8)
    axes = figure.add_subplot(1, 1, 1)
    left = [0.0] * len(systems)
    for k, stage in enumerate(stages):
        widths = [float(latency_by_system[s]["stages"].get(stage, {}).get(statistic, 0.0)) for s in systems]
        axes.barh(range(len(systems)), widths, left=left, label=stage, color=f"C{k % 10}", edgecolor="black", linewidth=0.5)
        left = [a + b for a, b in zip(left, widths)]
    p50 = [latency_by_system[s].get("p50_s") for s in systems]
    marked = [(i, v) for i, v in enumerate(p50) if v is not None]
    if marked:
        axes.scatter([v for _, v in marked], [i for i, _ in marked], marker="|", s=300, color="black", label="p50 total", zorder=3)
    axes.set_yticks(range(len(systems)))
    axes.set_yticklabels(systems, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"seconds per question ({'mean' if statistic == 'mean_s' else 'median'} per stage)", fontsize=9)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title or "Latency per stage", fontsize=10)
    figure.tight_layout()
    return _save_png(figure, path)
