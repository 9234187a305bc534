"""How a `python -m eval.bench speed` result is shown: the Markdown tables, the targets table, and the
READMEs they fill (a block of a README through eval.publish.replace_block, so no figure there is typed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from eval.bench_speed.measure import FIGURES, FORMAT, LATER_FIGURES, TOKEN_ORDER, BenchError
from eval.publish import PublishError, replace_block
from pipeline.fileio import atomic_write_text

# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------


def to_markdown(result: Mapping[str, Any]) -> str:
    m, s, d = result["machine"], result["samples"], result["detail"]
    rev = f"{result['git_revision']}{' + uncommitted changes' if result.get('git_dirty') else ''}"
    gen, lat, q = d["generate"], d["retrieve_rerank"], d["quality"]
    first = q.get("retriever", "hybrid")  # full's first stage (results written before it was recorded: hybrid)
    lines = [
        f"{result['mode']} run, git {rev}: {m['cpus']} CPUs ({m['cpu']}), {m['torch_threads']} torch threads, "
        f"load average {m['load_avg_1m_start']} at the start, {m.get('load_avg_1m_end', '?')} at the end; {result['wall_s']:.0f} s in all",
        "",
        "| part | ragft | baseline | speed-up | measured on |",
        "|---|---:|---:|---:|---|",
        f"| ingest: embedder passages/s | {result['ingest_per_s']:.1f} ({result.get('ingest_backend') or 'onnx-int8'}) | {result['ingest_per_s_baseline']:.1f} (torch fp32) | {result['ingest_speedup']:.2f}x | {s['passages']} train passages, batch {d['ingest']['batch']}, best of {s['rounds']} |",
        f"| rerank: cross-encoder pairs/s | {result['rerank_pairs_per_s']:.1f} ({result.get('rerank_backend') or 'onnx-int8'}) | {result['rerank_pairs_per_s_baseline']:.1f} (torch fp32) | {result['rerank_speedup']:.2f}x | {d['rerank']['queries']} queries x {s['candidates']} {first} candidates, batch {d['rerank']['batch']}, best of {s['rounds']} |",
        f"| generate: tokens/s | {result['generate_tok_s']:.1f} (LocalCausalLM {gen['project']['dtype']}) | {result['generate_tok_s_baseline']:.1f} (model.generate float32) | {result['generate_speedup']:.2f}x | {gen['prompts']} prompts (~{gen['prompt_tokens_mean']:.0f} tokens) x {gen['max_new_tokens']} new tokens, batch {gen['batch_size']}; identical answers {gen['identical']}/{gen['prompts']} |",
        "",
        f"- retrieve + rerank, one query ({lat['retriever']} top-{lat['candidates']}, {lat['embed_backend']} embedder, {lat['rerank_backend']} cross-encoder): "
        f"p50 {result['retrieve_rerank_p50_ms']:.0f} ms (retrieve {lat['retrieve_p50_ms']:.0f} ms, rerank {lat['rerank_p50_ms']:.0f} ms), p90 {lat['p90_ms']:.0f} ms over {lat['queries']} val questions",
        *([f"- one query's work per backend, each stage alone (p50 over {d['one_query']['queries']} val questions): embed the question "
            + ", ".join(f"{b} {ms:.1f} ms" for b, ms in d["one_query"]["embed_p50_ms"].items()) + f"; score its {s['candidates']} candidates "
            + ", ".join(f"{b} {ms:.1f} ms" for b, ms in d["one_query"]["rerank_p50_ms"].items())
            + ("; the two quickest of each paired, retrieve + rerank p50 " + ", ".join(f"{pair} {ms:.1f} ms" for pair, ms in d["one_query"]["pair_p50_ms"].items())
               + " (the quickest pair timed again above)" if d["one_query"].get("pair_p50_ms") else "")] if d.get("one_query") else []),
        f"- quality, open book, {q['questions']} val questions, corpus of {q['corpus']} answers: MRR@10 of {first} + rerank "
        f"{q['mrr@10']['torch'][first + '+rerank']:.4f} fp32, {q['mrr@10']['onnx-int8'][first + '+rerank']:.4f} onnx-int8: "
        f"delta {q['mrr10_delta']:+.4f} (95% CI [{q['delta_ci95'][0]:+.4f}, {q['delta_ci95'][1]:+.4f}]); {first} alone "
        f"{q['mrr@10']['torch'][first]:.4f} / {q['mrr@10']['onnx-int8'][first]:.4f}"
        + (f"; torch-int8: {q['mrr@10']['torch-int8'][first + '+rerank']:.4f}, delta {q['mrr10_delta_int8_torch']:+.4f} (95% CI [{q['delta_int8_torch_ci95'][0]:+.4f}, {q['delta_int8_torch_ci95'][1]:+.4f}]), {first} alone {q['mrr@10']['torch-int8'][first]:.4f}" if "mrr10_delta_int8_torch" in q else "")
        + (f"; bf16: {q['mrr@10']['torch-bf16'][first + '+rerank']:.4f}, delta {q['mrr10_delta_bf16']:+.4f} (95% CI [{q['delta_bf16_ci95'][0]:+.4f}, {q['delta_bf16_ci95'][1]:+.4f}]), {first} alone {q['mrr@10']['torch-bf16'][first]:.4f}" if "mrr10_delta_bf16" in q else "")
        + (f" (the headline delta is {result['mrr10_delta_backend']}'s)" if result.get("mrr10_delta_backend") not in (None, "onnx-int8") else ""),
        *([f"- every backend against torch fp32: ingest int8 {d['ingest']['int8_texts_per_s']:.0f} texts/s (cos {d['ingest']['cos_mean']:.4f}), "
            + (f"torch-int8 {d['ingest']['int8_torch_texts_per_s']:.0f} (cos {d['ingest']['int8_torch_cos_mean']:.4f}), " if "int8_torch_texts_per_s" in d["ingest"] else "")
            + f"bf16 {d['ingest']['bf16_texts_per_s']:.0f} (cos {d['ingest']['bf16_cos_mean']:.5f}); rerank int8 {d['rerank']['int8_pairs_per_s']:.0f} pairs/s, "
            + (f"torch-int8 {d['rerank']['int8_torch_pairs_per_s']:.0f} (logit correlation {d['rerank']['int8_torch_logit_corr']:.5f}), " if "int8_torch_pairs_per_s" in d["rerank"] else "")
            + f"bf16 {d['rerank']['bf16_pairs_per_s']:.0f} (logit correlation {d['rerank']['bf16_logit_corr']:.5f})"] if "bf16_texts_per_s" in d["ingest"] and "bf16_pairs_per_s" in d["rerank"] else []),
        *([f"- batching: torch fp32 fed batches cut by token count, as the int8 backends cut theirs (the baseline, like sentence-transformers, orders by characters): "
            f"ingest {d['ingest'][TOKEN_ORDER + '_texts_per_s']:.0f} texts/s, rerank {d['rerank'][TOKEN_ORDER + '_pairs_per_s']:.0f} pairs/s; the speed-ups over it, int8's own: "
            f"ingest {result['ingest_per_s'] / d['ingest'][TOKEN_ORDER + '_texts_per_s']:.2f}x, rerank {result['rerank_pairs_per_s'] / d['rerank'][TOKEN_ORDER + '_pairs_per_s']:.2f}x"]
          if TOKEN_ORDER + "_texts_per_s" in d["ingest"] and TOKEN_ORDER + "_pairs_per_s" in d["rerank"] else []),
        *([f"- answers against the val references: ROUGE-L {gen['rougeL']['project']:.4f} ({gen['project']['dtype']}) vs {gen['rougeL']['baseline']:.4f} (float32), "
            f"delta {gen['rougeL']['delta']:+.4f} (95% CI [{gen['rougeL']['delta_ci95'][0]:+.4f}, {gen['rougeL']['delta_ci95'][1]:+.4f}]) over {gen['prompts']} prompts"] if "rougeL" in gen else []),
        *([f"- streaming (what the chat UI waits for after retrieval): first words p50 {gen['first_token']['p50_ms']:.0f} ms, max {gen['first_token']['max_ms']:.0f} ms over {gen['first_token']['prompts']} with-context prompts at batch 1"] if "first_token" in gen else []),
        *([f"- embedder: {d['ingest']['model']}"] if d["ingest"].get("model") else []),  # recorded since the fine-tuned embedder is in full
        f"- cross-encoder: {d['rerank']['model']}",
        "- seconds per section: " + ", ".join(f"{name} {sec:.0f}" for name, sec in result["seconds"].items()),
    ]
    c, install = d.get("compare"), d.get("install")
    if install:
        lines += ["", f"`make install` into a fresh venv (`{install['command']}`): {install['wall_s']:.0f} s"]
    if c:
        lines += ["", f"eval.compare, profile {c['profile']}, {c['data']} ({c['split']}), fresh run_dir: {c['wall_s']:.0f} s in all", "", "| stage | action | seconds |", "|---|---|---:|"]
        lines += [f"| build {name} | {row['action']} | {row['seconds'] if row['seconds'] is not None else '-'} |" for name, row in c["build"].items()]
        lines += [f"| system {name} ({row['questions']} questions) | run | {row['seconds']:.1f} |" for name, row in c["systems"].items()]
    return "\n".join(lines)


# the speed targets, each with how a result meets it: (figure, target, rendered value, met)
def _target_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str, Optional[bool]]]:
    d = result["detail"]
    lat, gen, compare = d["retrieve_rerank"], d["generate"], d.get("compare")
    rouge = gen.get("rougeL")
    first = result.get("first_token_p50_ms")
    return [
        ("ingest vs torch fp32", ">= 3x", f"{result['ingest_speedup']:.2f}x ({result.get('ingest_backend') or 'onnx-int8'})", result["ingest_speedup"] >= 3),
        ("cross-encoder vs torch fp32", ">= 3x", f"{result['rerank_speedup']:.2f}x ({result.get('rerank_backend') or 'onnx-int8'})", result["rerank_speedup"] >= 3),
        ("retrieve + rerank top 20, p50", "<= 50 ms", f"{result['retrieve_rerank_p50_ms']:.0f} ms (retrieve {lat['retrieve_p50_ms']:.0f}, rerank {lat['rerank_p50_ms']:.0f})", result["retrieve_rerank_p50_ms"] <= 50),
        ("generation vs fp32 `model.generate`", ">= 2x", f"{result['generate_speedup']:.2f}x", result["generate_speedup"] >= 2),
        ("MRR@10 int8 - fp32", ">= -0.005", f"{result['mrr10_delta']:+.4f}" + (f" ({result['mrr10_delta_backend']})" if result.get("mrr10_delta_backend") not in (None, "onnx-int8") else ""), result["mrr10_delta"] >= -0.005),
        (
            "ROUGE-L of the faster answers - fp32's", "0 within the interval",
            f"{rouge['delta']:+.4f} [{rouge['delta_ci95'][0]:+.4f}, {rouge['delta_ci95'][1]:+.4f}]" if rouge else "-",
            rouge["delta_ci95"][0] <= 0 <= rouge["delta_ci95"][1] if rouge else None,
        ),
        ("first streamed words after retrieval, p50", "<= 1 s", f"{first:.0f} ms" if first is not None else "-", first <= 1000 if first is not None else None),
        _make_run_row(compare, d.get("install")),
    ]


def _make_run_row(compare: Optional[Mapping[str, Any]], install: Optional[Mapping[str, Any]]) -> tuple[str, str, str, Optional[bool]]:
    """`make run` from a fresh clone = `make install` + eval.compare in a fresh run_dir: a verdict
    only when the result timed both (--time-install); eval.compare alone otherwise."""
    name, target = "`make run` from a fresh clone: `make install` + `eval.compare` on the demo", "<= 15 min"
    if not compare:
        return name, target, "-", None
    if not install:
        return name, target, f"{compare['wall_s']:.0f} s ({compare['wall_s'] / 60:.1f} min) + the install (not timed)", None
    total = install["wall_s"] + compare["wall_s"]
    return name, target, f"{install['wall_s']:.0f} + {compare['wall_s']:.0f} s = {total / 60:.1f} min", total <= 15 * 60


def targets_table(columns: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One row per speed target, one column per (label, result): the figure and
    whether it meets the target, so the README's comparison of machines is generated, not typed."""
    rows = [_target_rows(result) for _, result in columns]
    header = [f"{label}, {result['git_revision']}" for label, result in columns]
    lines = ["| figure | target | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(columns)]
    for i, (name, target, _, _) in enumerate(rows[0]):
        cells = []
        for column in rows:
            value, met = column[i][2], column[i][3]
            cells.append(value if met is None else f"{value} ({'met' if met else 'not met'})")
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_result(path: Path, flag: str) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"{flag} {path}: cannot read it ({exc}). Fix: pass a file written by --out") from None
    missing = [key for key in FIGURES if key not in result and key not in LATER_FIGURES]
    if result.get("format") != FORMAT or missing:
        raise BenchError(f"{flag} {path}: not a {FORMAT} result (missing {', '.join(missing) or 'format'}). Fix: pass a file written by python -m eval.bench speed --out")
    return result


def fill_block(path_arg: str, flag: str, block: str, body: str) -> None:
    path = Path(path_arg)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"{flag} {path}: cannot read it ({exc}). Fix: pass the project README") from None
    try:
        atomic_write_text(path, replace_block(text, block, body))
    except PublishError as exc:
        raise BenchError(f"{flag} {path}: {exc}") from None


def readme_text(result: Mapping[str, Any], json_path: Optional[str] = None) -> str:
    """results/bench/README.md: the command, revision, wall time and figures, all from `result`."""
    flat = {key: result.get(key) for key in FIGURES}
    source = f" from `{json_path}`" if json_path else ""
    return "\n".join([
        "# Benchmark results",
        "",
        f"Written by eval/bench_speed (`--readme`){source}; do not edit by hand: regenerate it with "
        f"`python -m eval.bench speed --from-json {json_path or 'RESULT.json'} --readme README.md`.",
        "",
        f"## Speed ({result['mode']})",
        "",
        f"- command: `{result['command']}`",
        f"- git revision: `{result['git_revision']}`{' (with uncommitted changes)' if result.get('git_dirty') else ''}",
        f"- finished {result['finished']}; wall time {result['wall_s']:.0f} s",
        "",
        to_markdown(result),
        "",
        "Figures (the flat keys of the JSON):",
        "",
        "```json",
        json.dumps(flat, indent=2),
        "```",
        "",
    ])
