"""The document benchmark: Python's language reference, which no part of ragft was trained on.

    python -m eval.documents --data ../shared/data/seed-technical-qa/splits --split dev --out results/documents/retrieval-dev.json
    python -m eval.documents ... --answers full,rag_vanilla          # also answer, and score the answers

The document: the 79 reference topics that ship inside every CPython as `pydoc_data.topics` (the
text `help("with")` prints), exported as one markdown file per topic to
`{run_dir}/documents/pydoc-<python version>/` and ingested through the documents path
(`pipeline.index.ingest_all_indexes`) beside the knowledge base's QA pairs, into a benchmark copy of
both indexes (`{run_dir}/documents/index`, `index-finetuned`): the base embedder's and the
fine-tuned one's, which `full` searches. The indexes the rest of ragft uses are left as they are.

The questions (`eval/documents/data/{dev,test}.jsonl`, 32 each) were written by hand as a new user
asks, each with the topic that answers it and its evidence: a sentence of that topic, verbatim
(whitespace aside), that answers it. A retrieved passage *holds the answer* when it holds most of
the evidence (ROUGE-L recall of the evidence's words in order >= `EVIDENCE_RECALL`: a chunk
boundary may cut a sentence), from whichever topic's file: pydoc repeats sections verbatim across
topics (`compound` holds `for`, `while`, `try`, `with` and `function`; `specialnames` holds
`customization` and `context-managers`), and 14 of the 32 dev evidences are in two or three files.
`file@3` keeps the stricter reading, a passage of the question's own topic file.

Reported per system (its retrieval exactly as the engine runs it, `retrieve_only`): hit@1/3/5 (a
passage holding the answer among the first k the generator would read, k <= the system's own
count), file@3 (one of them from the topic's own file), topic@3 (any passage of the topic's
file), with 95% intervals. With `--answers`, each
system answers (`query_batch`), scored against the evidence: ROUGE-L, BERTScore F1, and the support
rate (`pipeline.support`: the share of answers at least half made of one of their passages' words)
over the questions it answered (a declined one, not in the knowledge base, is counted apart).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pipeline.config import Config
from pipeline.data import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("dev", "test")
KS = (1, 3, 5)
EVIDENCE_RECALL = 0.8


def pydoc_folder(config: Config) -> Path:
    return Path(config.run_dir) / "documents" / f"pydoc-{sys.version_info.major}.{sys.version_info.minor}"


def to_markdown_headings(text: str) -> str:
    """pydoc's reStructuredText-like titles (a line underlined with *** or ===) as markdown
    headings (# and ##), so that the documents path splits a topic at its sections."""
    lines = text.strip().splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        under = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and under and set(under) <= {"*", "=", "-"} and len(under) >= len(line.strip()) - 2:
            out.append(("# " if under[0] == "*" else "## ") + line.strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def export_pydoc(folder: Path) -> list[Path]:
    """One markdown file per pydoc topic (its first line as the title); rewritten only when changed."""
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in sorted(topics):
        text = to_markdown_headings(topics[key])
        path = folder / f"{key}.md"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def load_questions(split: str, data_dir: Path = DATA_DIR) -> list[dict[str, str]]:
    """The hand-written questions of `split`, each checked against this Python's pydoc topics."""
    import json

    from pydoc_data.topics import topics

    if split not in SPLITS:
        raise DataError(f"unknown document-benchmark split {split!r}; use dev (choose settings) or test (run once)")
    path = data_dir / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        if row["topic"] not in topics or " ".join(row["evidence"].split()) not in " ".join(topics[row["topic"]].split()):
            raise DataError(f"{path}: {row['id']}: the evidence is not in pydoc topic {row['topic']!r} of Python {sys.version.split()[0]}; the questions were written against Python 3.11's topics")
    return rows


def holds_answer(passage: str, file_name: str, row: Mapping[str, str], *, own_file: bool = False) -> bool:
    """Whether a passage holds the row's evidence (most of its words, in order); with `own_file`,
    only a passage from the row's topic file counts."""
    from pipeline.support import lcs_length, tokens

    if own_file and Path(file_name).stem != row["topic"]:
        return False
    evidence = tokens(row["evidence"])
    return bool(evidence) and lcs_length(tokens(passage), evidence) / len(evidence) >= EVIDENCE_RECALL


def benchmark_config(config: Config) -> Config:
    """The config whose indexes hold the knowledge base and the pydoc files: a benchmark copy."""
    from pipeline.config import config_from_dict

    raw = config.to_dict()
    folder = Path(config.run_dir) / "documents"
    raw["index"]["dir"] = str(folder / "index")
    raw["index"]["finetuned_dir"] = str(folder / "index-finetuned")
    raw["index"]["sources"] = [str(pydoc_folder(config))]
    return config_from_dict(raw)


def _hits(rows: Sequence[Mapping[str, str]], responses: Sequence[Any]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {f"hit@{k}": [] for k in KS}
    values["file@3"], values["topic@3"] = [], []
    for row, nodes in zip(rows, responses):
        holds = [holds_answer(n.node.get_content(), str(n.node.metadata.get("file_name", "")), row) for n in nodes]
        for k in KS:
            values[f"hit@{k}"].append(1.0 if any(holds[:k]) else 0.0)
        values["file@3"].append(1.0 if any(h and Path(str(n.node.metadata.get("file_name", ""))).stem == row["topic"] for h, n in zip(holds[:3], nodes)) else 0.0)
        values["topic@3"].append(1.0 if any(Path(str(n.node.metadata.get("file_name", ""))).stem == row["topic"] for n in nodes[:3]) else 0.0)
    return values


def evaluate_documents(
    config: Config,
    split: str,
    systems: Sequence[str],
    *,
    answers: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from pipeline.engine import Components, build_query_engine
    from pipeline.index import ingest_all_indexes
    from pipeline.metrics import summarize
    from pipeline.support import SUPPORTED, lexical_support

    rows = load_questions(split)
    files = export_pydoc(pydoc_folder(config))
    bench = benchmark_config(config)
    started = time.perf_counter()
    reports = ingest_all_indexes(bench, show_progress=show_progress, log=log)
    ingest_seconds = time.perf_counter() - started
    log(f"{len(files)} pydoc topics ingested beside the QA pairs into {', '.join(r.index_dir for r in reports)} in {ingest_seconds:.1f} s")
    components = Components(bench)
    result: dict[str, Any] = {"split": split, "questions": len(rows), "document": f"pydoc_data.topics of Python {sys.version.split()[0]} ({len(files)} topics)", "indexes": [r.index_dir for r in reports], "systems": {}, "seconds": {"ingest": round(ingest_seconds, 1)}}
    predictions = [dict(row) for row in rows]

    @functools.lru_cache(maxsize=1)
    def bertscore() -> Any:  # one scorer for every system's answers, loaded on first use
        from eval.metrics import BertScoreModel

        return BertScoreModel(config.eval.bertscore_model, allow_fallback=True)

    for system in systems:
        engine = build_query_engine(bench, system, components=components)
        started = time.perf_counter()
        if answers:
            responses = engine.query_batch([r["question"] for r in rows], show_progress=show_progress)
            nodes = [list(r.source_nodes) for r in responses]
        else:
            retrieved = [engine.retrieve_only(r["question"]) for r in rows]
            nodes, responses = [list(r["nodes"]) for r in retrieved], None
        result["seconds"][system] = round(time.perf_counter() - started, 1)
        values = _hits(rows, nodes)
        entry: dict[str, Any] = {}
        given: dict[str, Any] = {}  # the support of the answers given (declined questions have none)
        if responses is not None:
            from eval.metrics import compute_answer_scores

            texts = [str(r.response or "") for r in responses]
            scores = compute_answer_scores(texts, [r["evidence"] for r in rows], bertscore=bertscore())
            values["rougeL"] = list(scores.per_question["rougeL"])
            values["bertscore_f1"] = list(scores.per_question["bertscore_f1"])
            support = [lexical_support(t, [n.node.get_content() for n in ns])[0] for t, ns in zip(texts, nodes)]
            # support is a property of an answer: a declined question (not in the knowledge base) has none
            answered = [i for i, r in enumerate(responses) if not (r.metadata or {}).get("not_found")]
            entry["declined"] = len(rows) - len(answered)
            if answered:
                given = summarize({"support": [support[i] for i in answered], "supported": [1.0 if support[i] >= SUPPORTED else 0.0 for i in answered]}, samples=config.eval.bootstrap_samples, seed=config.eval.seed)
            for prediction, text, s in zip(predictions, texts, support):
                prediction.setdefault("answers", {})[system] = {"answer": text, "support": round(s, 4)}
        for prediction, ns, hit in zip(predictions, nodes, values["hit@3"]):
            prediction.setdefault("retrieved", {})[system] = {"hit@3": hit, "passages": [str(n.node.metadata.get("file_name") or n.node.node_id) for n in ns]}
        entry.update(summarize(values, samples=config.eval.bootstrap_samples, seed=config.eval.seed))
        if given:
            entry.update({k: given[k] for k in ("support", "supported")})
            entry["ci95"].update({k: given["ci95"][k] for k in ("support", "supported")})
        result["systems"][system] = entry
        log(f"{system}: hit@3 {entry['hit@3']:.3f}" + (f", support rate {entry['supported']:.3f}" if "supported" in entry else ""))
    return result, predictions


def to_markdown(result: Mapping[str, Any]) -> str:
    metrics = [m for m in ("hit@1", "hit@3", "hit@5", "file@3", "topic@3", "rougeL", "bertscore_f1", "supported") if any(m in s for s in result["systems"].values())]
    declined = any("declined" in s for s in result["systems"].values())
    lines = [
        f"### Documents: {result['document']}, {result['questions']} hand-written {result['split']} questions",
        "",
        "| system | " + " | ".join(metrics) + (" | declined |" if declined else " |"),
        "|---|" + "---:|" * (len(metrics) + declined),
    ]
    for system, summary in result["systems"].items():
        cells = [f"{summary[m]:.3f} [{summary['ci95'][m][0]:.3f}, {summary['ci95'][m][1]:.3f}]" if m in summary else "–" for m in metrics]
        lines.append(f"| {system} | " + " | ".join(cells) + (f" | {summary.get('declined', '–')} |" if declined else " |"))
    if result.get("hit_definition"):  # a run from before hit@k counted every topic file
        lines += ["", f"In this run {result['hit_definition']}."]
    lines += ["", "hit@k: a passage holding the answer (most of the evidence sentence, from any topic's file: pydoc repeats sections across topics) among the first k the system reads; file@3: one from the topic's own file; topic@3: any passage of the topic's file; supported: the share of the answers given at least half made of one of their passages' words (pipeline.support); declined: questions answered as not in the knowledge base. Seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()) + "."]
    return "\n".join(lines)
