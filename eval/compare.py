"""Compare every system on one split: build what is missing, run, score, one table, plots.

    python -m eval.compare                                   # tiny profile, bundled demo data, every system
    python -m eval.compare --systems vanilla,rag_vanilla,full --limit 20
    python -m eval.compare --config pipeline/configs/tiny.yaml --data ../shared/data/seed-technical-qa/splits --split test
    python -m eval.compare --dry-run                         # print what would be built or reused, then stop
    python -m eval.compare --force --systems full            # run `full` again even though it finished

Steps:
1. Plan (eval/build.py): for every artifact the chosen systems need (prepared data, base LM,
   knowledge base, reranker, plain / RAFT generator adapters, rewriter adapter), reuse it when its
   resolved config matches the settings in force, else build or rebuild it through the builders'
   Python APIs; an artifact the config names outside ragft's outputs (a hub model) must exist.
2. Run each system over the split through its LlamaIndex query engine (`query_batch`: retrieval
   per question, then one batched generation pass), in chunks of `eval.chunk_size` questions.
   Each finished chunk is appended to a cache keyed by (system config digest, question), so an
   interrupted run continues where it stopped; a system whose predictions file and done marker
   match its digest is not run again unless --force.
3. Score (eval/metrics.py): BLEU-4, ROUGE-L, BERTScore F1, EM, token F1 with bootstrap 95%
   intervals; retrieval R@5 / MRR@10 where a gold passage exists; p50 latency; a paired bootstrap
   test of each system against `eval.baseline` (rag_vanilla). When the data is the reference
   experiment's (recognised by the content hash of its splits, not its path), its four prediction
   files are scored by the same code and shown beside ours, labelled.

Writes to --out (default `eval.out` = {run_dir}/compare):
    predictions/<system>.jsonl        question, prediction, reference, sources, trace, timings per line
    predictions/<system>.done.json    written last: the system's digest, questions and seconds
    cache/<system>/<digest>.jsonl     append-only generation cache (resume)
    metrics.json  report.md  metrics.png  latency.png  ragft_config.yaml

--data DIR evaluates another prepared data set (train/val/test.jsonl). Everything built from data
(knowledge base, reranker, adapters, results) then lives under {run_dir}/data/<folder>-<hash>, so
the profile's own artifacts are never overwritten; the base LM does not depend on the data and is
shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from eval.build import BuildError, data_sha, execute_plan, plan_builds, required_artifacts, upstream_fingerprints
from eval.metrics import BertScoreModel, compute_answer_scores, latency_summary, paired_answer_tests
from eval.report import plot_latency, plot_metrics, render_paired_tests, render_table
from eval.score import read_predictions
from pipeline.cli import add_io_arguments, config_for_data
from pipeline.config import RETIRED_DEFAULTS, Config, ConfigError, add_config_arguments, save_resolved_config
from pipeline.data import DataError, load_split
from pipeline.errors import run_cli
from pipeline.fileio import append_lines, atomic_write_text, read_complete_lines, write_json, write_jsonl
from pipeline.index import open_index, qa_node_id
from pipeline.metrics import retrieval_per_query, summarize
from pipeline.systems import SYSTEM_NAMES, SYSTEMS, SystemSpec, get_system, uses_finetuned_embedder
from pipeline.version import __version__

# Content hash (eval.build.data_sha: the (question, answer) pairs of train, val and test) of the
# reference experiment's splits, ../shared/data/seed-technical-qa/splits. Recognising the data by
# content means a copy anywhere (or `pipeline.prepare` re-creating it) still gets the reference rows.
REFERENCE_DATA_SHA = "473eba76b925c7c7010c25aff807770636ee3de00fbc5f16ce292ed6b5969019"
REFERENCE_SYSTEMS = ("vanilla", "rag_vanilla", "finetuned", "rag_finetuned")
REFERENCE_LABEL = "reference experiment"
SOURCE_TEXT_CHARS = 500  # passage text kept per source in predictions files (the full text is in the index)
FORMAT = "ragft-compare/1"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> Config:
    """The profile + --set overrides + this command's flags; with --data, data-dependent
    artifacts move to their own run folder (see the module docstring)."""
    flags = []
    if args.systems is not None:
        flags.append(f"eval.systems={json.dumps([s.strip() for s in args.systems.split(',') if s.strip()])}")
    if args.split is not None:
        flags.append(f"eval.split={args.split}")
    if args.limit is not None:
        flags.append(f"eval.limit={args.limit}")
    if args.out is not None:
        flags.append(f"eval.out={json.dumps(args.out)}")
    return config_for_data(args, flags)


def chosen_systems(config: Config) -> list[str]:
    names = list(config.eval.systems) or list(SYSTEM_NAMES)
    for name in names:
        get_system(name)  # unknown names fail here, with the list of valid ones
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--systems names {', '.join(duplicates)} more than once")
    return names


# --------------------------------------------------------------------------------------------
# digests: what a system's generations depend on
# --------------------------------------------------------------------------------------------

_GENERATOR_KEYS = ("backend", "model", "merge_adapter", "torch_dtype", "load_in_4bit", "max_new_tokens", "temperature", "repetition_penalty", "context_top_k", "max_passage_chars", "trust_remote_code", "api_base")
_INDEX_KEYS = ("embed_model", "backend", "collection", "sources", "chunk_size", "chunk_overlap", "chroma_host", "chroma_port")


def system_settings(config: Config, spec: SystemSpec) -> dict[str, Any]:
    """The settings and artifact identities a system's answers depend on (derived from its spec)."""
    tree = config.to_dict()
    rewrites = spec.retrieve is not None and (spec.rewrite or spec.agent)
    system = spec.components()
    if not uses_finetuned_embedder(config, spec):
        del system["embedder"]  # the base index either way: answers do not depend on it (digests stay those of earlier runs)
    settings: dict[str, Any] = {"ragft": __version__, "system": system}
    if spec.generator is not None or rewrites:
        settings["generator"] = {k: tree["generator"][k] for k in _GENERATOR_KEYS}
        settings["generator"]["quantize"] = RETIRED_DEFAULTS["generator.quantize"]  # a removed key: the digests of earlier runs stay as they were
        if tree["generator"]["cache_implementation"]:  # only when set: the digests of dynamic-cache runs stay as they were
            settings["generator"]["cache_implementation"] = tree["generator"]["cache_implementation"]
        if spec.generator == "raft" and tree["generator"]["copy_bias"]:  # only the RAFT generator reads it, and only when set
            settings["generator"]["copy_bias"] = tree["generator"]["copy_bias"]
    if spec.retrieve is not None:
        index_tree = tree["index"]
        if uses_finetuned_embedder(config, spec):  # the fine-tuned embedder's index (its identity is in "artifacts")
            index_tree = {**index_tree, "embed_model": "finetuned:" + config.finetune.embedder.output, "backend": config.index.finetuned_backend or config.index.backend}
        settings["index"] = {k: index_tree[k] for k in _INDEX_KEYS}
        settings["knowledge_splits"] = tree["data"]["knowledge_splits"]
        settings["retrieve"] = tree["retrieve"]
        settings["context_top_k"] = tree["generator"]["context_top_k"]
    if spec.rerank:
        settings["rerank"] = {k: v for k, v in tree["rerank"].items() if k != "batch_size"}
    if rewrites:
        # hyde_question_weight only when set: the digests of plain-mean runs stay as they were
        settings["rewrite"] = {k: v for k, v in tree["rewrite"].items() if k != "hyde_question_weight" or v is not None}
    if spec.agent:
        # calibration only when set: the digests of runs graded by the raw score stay as they were
        settings["agent"] = {k: v for k, v in tree["agent"].items() if k != "calibration" or v}
    if spec.full_family and spec.retrieve is not None and spec.generator is not None and config.generator.on_unsupported == "quote":
        # only quoting changes answers (flagging writes metadata): the digests of other runs stay as they were
        settings["support"] = {"on_unsupported": "quote", "threshold": config.generator.support_threshold}
        if config.generator.quote_below is not None:
            settings["support"]["quote_below"] = config.generator.quote_below
    settings["artifacts"] = upstream_fingerprints(config, required_artifacts(config, [spec]))
    return settings


def system_digest(config: Config, spec: SystemSpec) -> str:
    return hashlib.sha256(json.dumps(system_settings(config, spec), sort_keys=True).encode("utf-8")).hexdigest()[:16]


def questions_sha(questions: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(questions), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the generation cache and the finished-system marker
# --------------------------------------------------------------------------------------------


class GenerationCache:
    """Append-only JSON lines `{"question": q, "row": {...}}` for one (system, digest). A line is
    only complete with its newline; a torn last line (a killed run) is cut off before appending."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        return {entry["question"]: entry["row"] for entry in read_complete_lines(self.path)}

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        append_lines(self.path, ({"question": row["question"], "row": row} for row in rows))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _paths(out: Path, system: str) -> tuple[Path, Path, Path]:
    return out / "predictions" / f"{system}.jsonl", out / "predictions" / f"{system}.done.json", out / "cache" / system


def finished(out: Path, system: str, digest: str, qsha: str) -> Optional[list[dict[str, Any]]]:
    """The rows of a finished system (marker and predictions agree with the digest and the
    questions), else None."""
    predictions, marker, _ = _paths(out, system)
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if done.get("digest") != digest or done.get("questions_sha") != qsha or not predictions.is_file():
        return None
    try:  # "\n" only ends a line (see GenerationCache.load); a damaged file means: run it again
        rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, ValueError):
        return None
    return rows if len(rows) == done.get("n") else None


# --------------------------------------------------------------------------------------------
# running one system
# --------------------------------------------------------------------------------------------


def response_row(question: str, reference: str, response: Any) -> dict[str, Any]:
    metadata = dict(response.metadata or {})
    sources = []
    for rank, hit in enumerate(response.source_nodes, start=1):
        text = hit.node.get_content()
        sources.append({"rank": rank, "id": hit.node.node_id, "score": None if hit.score is None else round(float(hit.score), 6), "text": text[:SOURCE_TEXT_CHARS]})
    timings = metadata.pop("timings", {})
    return {
        "question": question,
        "prediction": response.response or "",
        "reference": reference,
        "sources": sources,
        "trace": metadata,
        "timings": timings,
    }


def run_system(
    name: str,
    engine: Any,
    records: Sequence[dict[str, str]],
    out: Path,
    digest: str,
    *,
    chunk_size: int,
    force: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], str]:
    """Rows of every question for one system, and how they were obtained: reused | resumed | run."""
    questions = [r["question"] for r in records]
    qsha = questions_sha(questions)
    predictions, marker, cache_dir = _paths(out, name)
    cache = GenerationCache(cache_dir / f"{digest}.jsonl")
    if force:
        cache.clear()
        marker.unlink(missing_ok=True)
    else:
        rows = finished(out, name, digest, qsha)
        if rows is not None:
            return rows, "reused"
    # from here on the system is unfinished: no marker, and no predictions file from other settings
    marker.unlink(missing_ok=True)
    predictions.unlink(missing_ok=True)
    cached = cache.load()
    todo = [r for r in records if r["question"] not in cached]
    log(f"{name}: {len(records)} questions, {len(records) - len(todo)} from the cache, {len(todo)} to run")
    started = time.perf_counter()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        responses = engine.query_batch([r["question"] for r in chunk], show_progress=show_progress)
        rows = [response_row(r["question"], r["answer"], resp) for r, resp in zip(chunk, responses)]
        cache.append(rows)
        cached.update({row["question"]: row for row in rows})
    # references are re-attached: the cache is keyed by question only
    rows = [{**cached[r["question"]], "reference": r["answer"]} for r in records]
    write_jsonl(predictions, rows)
    write_json(marker, {"system": name, "digest": digest, "questions_sha": qsha, "n": len(rows), "seconds": round(time.perf_counter() - started, 2), "finished": _now()})
    return rows, "resumed" if len(todo) < len(records) else "run"


def copy_finished(out: Path, source: str, target: str, digest: str, records: Sequence[dict[str, str]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Record `source`'s rows as `target`'s: two systems whose digests are equal run the same parts
    with the same settings (e.g. full-dense where retrieve.mode is dense), so their answers are the
    same; the marker says which system they come from."""
    predictions, marker, _ = _paths(out, target)
    write_jsonl(predictions, rows)
    write_json(marker, {"system": target, "same_as": source, "digest": digest, "questions_sha": questions_sha([r["question"] for r in records]), "n": len(rows), "seconds": 0.0, "finished": _now()})
    return list(rows)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# retrieval metrics: gold passages exist only when the question's own pair is in the knowledge base
# --------------------------------------------------------------------------------------------


def gold_passages(config: Config, records: Sequence[dict[str, str]], kb: Any = None) -> list[Optional[set[str]]]:
    """Per question, the ids of its relevant passages: its own QA node (open-book) plus any node
    with exactly the same answer text (indistinguishable); None when its own pair is not in the
    knowledge base (closed-book: no gold passage)."""
    kb = kb or open_index(config)
    nodes = kb.nodes
    by_answer: dict[str, set[str]] = {}
    for node_id, node in nodes.items():
        answer = node.metadata.get("answer")
        if isinstance(answer, str):
            by_answer.setdefault(answer.strip(), set()).add(node_id)
    gold: list[Optional[set[str]]] = []
    for record in records:
        own = qa_node_id(record["question"], record["answer"])
        gold.append({own} | by_answer.get(record["answer"].strip(), set()) if own in nodes else None)
    return gold


def ranked_ids(row: dict[str, Any]) -> list[str]:
    """The system's final ranking of a question: the last round's reranked list, else its retrieved list."""
    rounds = row.get("trace", {}).get("rounds") or []
    if not rounds:
        return []
    last = rounds[-1]
    return [hit["id"] for hit in (last.get("reranked") or last.get("retrieved") or [])]


def retrieval_scores(rows: Sequence[dict[str, Any]], gold: Sequence[Optional[set[str]]], *, samples: int, seed: int) -> Optional[dict[str, Any]]:
    """R@k, MRR@10, nDCG@10 with intervals over the questions that have a gold passage; None when none has."""
    pairs = [(ranked_ids(row), g) for row, g in zip(rows, gold) if g]
    if not pairs:
        return None
    summary = summarize(retrieval_per_query([p[0] for p in pairs], [p[1] for p in pairs]), samples=samples, seed=seed)
    summary["n_with_gold"] = len(pairs)
    return summary


# --------------------------------------------------------------------------------------------
# the reference experiment's rows
# --------------------------------------------------------------------------------------------


def reference_files(config: Config, split: str) -> dict[str, Path]:
    """The reference experiment's prediction files for this split when the data is its data."""
    if data_sha(config.data.dir) != REFERENCE_DATA_SHA:
        return {}
    folder = Path(config.eval.reference_results) if config.eval.reference_results else Path(config.data.dir).resolve().parent / "results"
    files = {name: folder / f"{name}_{split}.jsonl" for name in REFERENCE_SYSTEMS}
    return {name: path for name, path in files.items() if path.is_file()}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def mark_not_applicable(table: str, systems: set[str], columns: Sequence[str] = ("R@5", "MRR@10")) -> str:
    """Write "n/a" in the retrieval cells of retrieving systems that have no gold passage
    (render_table shows "–" for every missing value; here the value cannot exist)."""
    lines = table.split("\n")
    header: Optional[list[str]] = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None and cells and cells[0] == "system":
            header = cells
            continue
        if header and cells and cells[0] in systems:
            for column in columns:
                if column in header:
                    cells[header.index(column)] = "n/a"
            lines[i] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines)


def retrieval_note(protocol: dict[str, Any]) -> str:
    if protocol["kind"] == "closed-book":
        return (
            f"Retrieval (R@5, MRR@10): **n/a** for the systems that retrieve. The knowledge base holds the "
            f"{', '.join(protocol['knowledge_splits'])} split(s) and the questions come from `{protocol['split']}`, so no "
            "question's own answer is in it (closed-book): there is no gold passage to find. "
            "Add the split to `data.knowledge_splits` (open-book) to measure retrieval, or see `python -m eval.retrieval`. "
            "`–`: the system does not retrieve."
        )
    return (
        f"Retrieval (R@5, MRR@10): open-book. {protocol['n_with_gold']} of {protocol['n']} questions have their own "
        "question/answer pair in the knowledge base; its node (and any node with exactly the same answer text) is the gold "
        "passage. The ranking is the system's final one: the last round's reranked list, else its retrieved list "
        "(top-k passages, so MRR@10 counts at most k ranks). Values are over the questions with a gold passage. "
        "`–`: the system does not retrieve."
    )


def render_report(result: dict[str, Any]) -> tuple[str, str]:
    """(report.md, the table printed to the terminal)."""
    ours = result["systems"]
    refs = result.get("reference", {}).get("systems") or None
    retrieving = {name for name in ours if get_system(name).retrieve is not None}
    table = render_table(
        ours,
        model_for_bertscore=result["model_for_bertscore"],
        bertscore_info=result["bertscore"],
        reference_rows=refs,
        reference_label=REFERENCE_LABEL,
        retrieval=bool(retrieving),
        latency=True,
    )
    if result["retrieval_protocol"]["kind"] == "closed-book":
        table = mark_not_applicable(table, retrieving)
    baseline = result["baseline"]
    tests = {name: row["vs_baseline"] for name, row in ours.items() if row.get("vs_baseline")}
    paired = render_paired_tests(tests, baseline) if baseline else f"No paired tests: the baseline `{result['settings']['baseline']}` was not among the systems.\n"
    data = result["data"]
    lines = [
        "# ragft: system comparison",
        "",
        f"Profile `{result['profile']}`, data `{data['dir']}` (content hash {data['sha'][:12]}), split `{data['split']}`, "
        f"{data['n']} questions{' (--limit)' if data['limited'] else ''}; {result['finished']}.",
        "",
        table,
        retrieval_note(result["retrieval_protocol"]) if retrieving else "No system here retrieves: no retrieval columns.",
        "",
        "Latency: p50 over questions of the sum of a question's stage times (rewrite, retrieve, rerank, generate); generation "
        "is one batched pass per chunk, so a question's `generate` time is its share of that pass (the engine's `total` in batch "
        "mode also counts waiting for the rest of the chunk and is not used). Per stage: `latency.png`.",
        "",
    ]
    if refs:
        lines += [
            f"Rows labelled `({REFERENCE_LABEL})` are the reference experiment's own prediction files "
            f"({result['reference']['folder']}), scored here by the same code on the same questions; the data was recognised by "
            "the content hash of its splits.",
            "",
        ]
    elif result.get("reference", {}).get("note"):
        lines += [result["reference"]["note"], ""]
    lines += ["## Paired tests", "", paired, "## Systems", "", "| system | what it is | run |", "|---|---|---|"]
    for name, row in ours.items():
        lines.append(f"| {name} | {SYSTEMS[name].description} | {row['status']} |")
    lines += ["", "## Artifacts", "", "```", *(f"{s['artifact']:<16} {s['action']:<8} {s['path']}: {s['reason']}" for s in result["plan"]), "```", ""]
    lines += ["Plots: `metrics.png` (answer metrics with 95% whiskers), `latency.png` (seconds per stage). Predictions: `predictions/<system>.jsonl`.", ""]
    summary = table + "\n" + paired
    return "\n".join(lines), summary


# --------------------------------------------------------------------------------------------
# the whole job
# --------------------------------------------------------------------------------------------


def compare(
    config: Config,
    *,
    force: bool = False,
    build: bool = True,
    dry_run: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan and build, run every chosen system, score, write the report. Returns metrics.json's content."""
    settings = config.eval
    systems = chosen_systems(config)
    split = settings.split
    out = Path(settings.out)

    plan = plan_builds(config, systems, split=split)
    log("build plan:\n" + plan.describe())
    if dry_run:
        return {"plan": plan.as_dicts()}
    if plan.to_build:
        if not build:
            raise BuildError("these artifacts are missing or out of date and --no-build was given: " + ", ".join(s.artifact for s in plan.to_build))
        execute_plan(plan, config, log=log, show_progress=show_progress)

    records = load_split(config.data.dir, split)
    limited = settings.limit is not None and settings.limit < len(records)
    records = records[: settings.limit] if settings.limit else records
    if not records:
        raise DataError(f"the {split} split of {config.data.dir} is empty: nothing to evaluate")

    from pipeline.engine import Components, build_query_engine

    components = Components(config)
    rows_by_system: dict[str, list[dict[str, Any]]] = {}
    status: dict[str, str] = {}
    digests: dict[str, str] = {}
    for i, name in enumerate(systems, start=1):
        spec = get_system(name, config)
        digests[name] = system_digest(config, spec)
        log(f"==> [{i}/{len(systems)}] {name}: {spec.description}")
        twin = next((other for other in rows_by_system if digests[other] == digests[name]), None)
        if twin is not None:
            rows, how = copy_finished(out, twin, name, digests[name], records, rows_by_system[twin]), f"same as {twin}"
            log(f"{name}: the same parts and settings as {twin} under this profile; its answers are reused")
        else:
            engine = build_query_engine(config, name, components=components)
            rows, how = run_system(name, engine, records, out, digests[name], chunk_size=settings.chunk_size, force=force, show_progress=show_progress, log=log)
        if how == "reused":
            log(f"{name}: finished earlier with the same settings; reused (--force runs it again)")
        rows_by_system[name] = rows
        status[name] = how

    result = score(config, systems, records, rows_by_system, components=components, log=log, show_progress=show_progress)
    for name in systems:
        result["systems"][name]["status"] = status[name]
        result["systems"][name]["digest"] = digests[name]
    result["plan"] = plan.as_dicts()
    result["data"].update({"limited": limited})
    report, summary = render_report(result)
    write_json(out / "metrics.json", result)
    atomic_write_text(out / "report.md", report)

    refs = result.get("reference", {}).get("systems") or None
    plot_metrics(result["systems"], out / "metrics.png", reference_rows=refs, reference_label=REFERENCE_LABEL, model_for_bertscore=result["model_for_bertscore"])
    plot_latency({name: row["latency"] for name, row in result["systems"].items()}, out / "latency.png")
    save_resolved_config(config, out, extra={"kind": "compare", "systems": systems, "split": split, "n": len(records)})
    result["summary"] = summary
    return result


def score(
    config: Config,
    systems: Sequence[str],
    records: Sequence[dict[str, str]],
    rows_by_system: dict[str, list[dict[str, Any]]],
    *,
    components: Any = None,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Every metric of every system (and of the reference rows when the data is the reference's)."""
    from tqdm.auto import tqdm

    settings = config.eval
    samples, seed = settings.bootstrap_samples, settings.seed
    scorer = None
    if settings.bertscore:
        scorer = BertScoreModel.from_config(config)
        scorer.resolved  # noqa: B018  (find the model, or fall back saying so, before scoring)
    questions = [r["question"] for r in records]
    references = [r["answer"] for r in records]

    retrieving = [name for name in systems if get_system(name).retrieve is not None]
    gold: list[Optional[set[str]]] = [None] * len(records)
    if retrieving:
        gold = gold_passages(config, records, kb=components.kb if components is not None else None)
    n_gold = sum(1 for g in gold if g)
    protocol = {
        "kind": "open-book" if n_gold else "closed-book",
        "split": settings.split,
        "knowledge_splits": list(config.data.knowledge_splits),
        "n": len(records),
        "n_with_gold": n_gold,
    }

    answer_scores = {}
    systems_out: dict[str, dict[str, Any]] = {}
    for name in tqdm(systems, desc="scoring", unit="system", disable=not show_progress):
        rows = rows_by_system[name]
        answer_scores[name] = compute_answer_scores([r["prediction"] for r in rows], references, bertscore=scorer, questions=questions)
        row = answer_scores[name].summary(samples=samples, seed=seed)
        row["description"] = SYSTEMS[name].description
        # a question's latency is the sum of its stages: in batch mode the engine's `total` also
        # counts the time spent waiting for the rest of its chunk, which is not the question's cost
        row["latency"] = latency_summary([{k: v for k, v in r["timings"].items() if k != "total"} for r in rows])
        row["retrieval"] = retrieval_scores(rows, gold, samples=samples, seed=seed) if name in retrieving else None
        row["not_found"] = sum(1 for r in rows if r["trace"].get("not_found"))
        systems_out[name] = row

    baseline = settings.baseline if settings.baseline in systems else None
    if baseline:
        for name in systems:
            if name != baseline:
                systems_out[name]["vs_baseline"] = paired_answer_tests(answer_scores[name], answer_scores[baseline], samples=samples, seed=seed)

    reference: dict[str, Any] = {"systems": {}}
    files = reference_files(config, settings.split)
    if files:
        reference["folder"] = str(next(iter(files.values())).parent)
        for name, path in files.items():
            by_question = {r["question"]: r for r in read_predictions(path)}
            missing = [q for q in questions if q not in by_question]
            if missing:
                log(f"note: {path} lacks {len(missing)} of the {len(questions)} questions; its row is left out")
                continue
            rows = [by_question[q] for q in questions]
            scores = compute_answer_scores([r["prediction"] for r in rows], [r["reference"] for r in rows], bertscore=scorer, questions=questions)
            reference["systems"][name] = {**scores.summary(samples=samples, seed=seed), "file": str(path)}
    elif data_sha(config.data.dir) == REFERENCE_DATA_SHA:
        reference["note"] = f"The data is the reference experiment's, but its prediction files for `{settings.split}` were not found (set eval.reference_results)."

    return {
        "format": FORMAT,
        "profile": config.profile,
        "finished": _now(),
        "data": {"dir": config.data.dir, "sha": data_sha(config.data.dir), "split": settings.split, "n": len(records), "reference_data": data_sha(config.data.dir) == REFERENCE_DATA_SHA},
        "settings": {"baseline": settings.baseline, "bootstrap_samples": samples, "seed": seed, "chunk_size": settings.chunk_size},
        "model_for_bertscore": scorer.model_for_bertscore if scorer else None,
        "bertscore": scorer.info() if scorer else None,
        "baseline": baseline,
        "retrieval_protocol": protocol,
        "systems": systems_out,
        "reference": reference,
    }


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.compare",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    add_io_arguments(
        parser,
        data="Prepared data folder (train/val/test.jsonl) to evaluate on. Default: data.dir of the profile (the bundled demo data for tiny). Artifacts built from other data go under {run_dir}/data/<folder>-<hash> (the base LM stays shared), unless --set run_dir=... names a run folder.",
        split="Split whose questions are answered. Default: eval.split (test).",
        out="Output folder for predictions, metrics.json, report.md and plots. Default: eval.out ({run_dir}/compare).",
        out_metavar="DIR",
    )
    parser.add_argument("--systems", metavar="A,B,...", help=f"Comma-separated systems to run. Default: eval.systems, empty = every named system ({', '.join(SYSTEM_NAMES)}).")
    parser.add_argument("--limit", type=int, metavar="N", help="Only the first N questions of the split (quick runs). Default: eval.limit (all).")
    parser.add_argument("--force", action="store_true", help="Run the chosen systems again even when they finished with the same settings (their generation cache is discarded too).")
    parser.add_argument("--dry-run", action="store_true", help="Print the build plan (what would be built, rebuilt or reused, and why) and exit.")
    parser.add_argument("--no-build", action="store_true", help="Fail instead of building missing or out-of-date artifacts.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars (logs stay).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        print(f"error: --limit must be > 0; got {args.limit}", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def body() -> None:
        config = resolve_config(args)
        result = compare(config, force=args.force, build=not args.no_build, dry_run=args.dry_run, show_progress=not args.no_progress)
        if not args.dry_run:
            print()
            print(result["summary"], end="")
            print(f"\nwrote {config.eval.out}/report.md, metrics.json, metrics.png, latency.png and predictions/ in {time.perf_counter() - started:.0f} s")

    return run_cli(body)

if __name__ == "__main__":
    raise SystemExit(main())
