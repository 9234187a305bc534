"""eval.compare: resumable runs, the report's content, reference rows, and the whole job on the
session's tiny system (micro LM, random cross-encoder, real MiniLM index)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval import compare as cmp
from pipeline.config import load_config, save_resolved_config
from pipeline.data import load_split


# --------------------------------------------------------------------------------------------
# helpers: fake engines and rows (the model is irrelevant to resuming and reporting)
# --------------------------------------------------------------------------------------------


class FakeEngine:
    """query_batch like RagftQueryEngine's; answers "answer to <q>"; can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def query_batch(self, questions, show_progress=True):
        from llama_index.core.base.response.schema import Response
        from llama_index.core.schema import NodeWithScore, TextNode

        self.calls.append(list(questions))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # what a Ctrl-C in the middle of a system looks like
        return [
            Response(
                response=f"answer to {q}",
                source_nodes=[NodeWithScore(node=TextNode(id_="n1", text="a passage"), score=0.5)],
                metadata={"system": "fake", "rounds": [{"round": 1, "mode": "none", "retrieved": [{"id": "n1", "score": 0.5}]}], "not_found": False, "timings": {"retrieve": 0.01, "generate": 0.02, "total": 0.03}},
            )
            for q in questions
        ]


def _records(n: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}?", "answer": f"reference answer {i}"} for i in range(n)]


def _row(record, prediction, ranked=(), rounds=True):
    trace = {"rounds": [{"round": 1, "mode": "none", "retrieved": [{"id": i, "score": 1.0} for i in ranked]}] if rounds else [], "not_found": False}
    return {"question": record["question"], "prediction": prediction, "reference": record["answer"], "sources": [], "trace": trace, "timings": {"generate": 0.2, "total": 0.3}}


class FakeKB:
    def __init__(self, nodes):
        self.nodes = nodes


# --------------------------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------------------------


def test_cache_ignores_a_torn_last_line_and_appends_after_it(tmp_path):
    cache = cmp.GenerationCache(tmp_path / "c.jsonl")
    cache.append([{"question": "a", "x": 1}])
    with open(cache.path, "a", encoding="utf-8") as handle:
        handle.write('{"question": "b", "row": {"question": "b"')  # killed mid-write
    assert set(cache.load()) == {"a"}
    cache.append([{"question": "c", "x": 3}])
    assert set(cache.load()) == {"a", "c"}
    assert all(json.loads(line) for line in cache.path.read_text().splitlines())


def test_interrupted_system_never_looks_finished_and_resumes_where_it_stopped(tmp_path):
    records = _records(7)
    engine = FakeEngine(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        cmp.run_system("sys", engine, records, tmp_path, "d1", chunk_size=2, log=lambda *_: None)
    assert not (tmp_path / "predictions" / "sys.jsonl").exists()
    assert not (tmp_path / "predictions" / "sys.done.json").exists()

    engine = FakeEngine()
    rows, how = cmp.run_system("sys", engine, records, tmp_path, "d1", chunk_size=2, log=lambda *_: None)
    assert how == "resumed"
    assert engine.calls == [["q4?", "q5?"], ["q6?"]]  # the two finished chunks came from the cache
    assert [r["question"] for r in rows] == [r["question"] for r in records]
    assert rows[0] == {**rows[0], "prediction": "answer to q0?", "reference": "reference answer 0", "timings": {"retrieve": 0.01, "generate": 0.02, "total": 0.03}}
    assert rows[0]["sources"][0]["id"] == "n1" and rows[0]["trace"]["rounds"][0]["retrieved"][0]["id"] == "n1"

    again = FakeEngine()
    assert cmp.run_system("sys", again, records, tmp_path, "d1", chunk_size=2, log=lambda *_: None)[1] == "reused"
    assert again.calls == []
    # settings changed and the new run is interrupted: the old predictions do not stay behind
    with pytest.raises(KeyboardInterrupt):
        cmp.run_system("sys", FakeEngine(fail_on_call=1), records, tmp_path, "d0", chunk_size=2, log=lambda *_: None)
    assert not (tmp_path / "predictions" / "sys.jsonl").exists()
    # another digest (settings changed) or other questions: run again, not reused
    assert cmp.run_system("sys", FakeEngine(), records, tmp_path, "d2", chunk_size=2, log=lambda *_: None)[1] == "run"
    assert cmp.run_system("sys", FakeEngine(), records[:3], tmp_path, "d2", chunk_size=2, log=lambda *_: None)[1] == "resumed"
    forced = FakeEngine()
    assert cmp.run_system("sys", forced, records[:3], tmp_path, "d2", chunk_size=5, force=True, log=lambda *_: None)[1] == "run"
    assert forced.calls == [["q0?", "q1?", "q2?"]]


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def _score(config, records, rows_by_system, kb):
    class Components:
        pass

    components = Components()
    components.kb = kb
    return cmp.score(config, list(rows_by_system), records, rows_by_system, components=components, log=lambda *_: None, show_progress=False)


def test_report_closed_book_shows_na_with_the_reason_and_paired_tests(tmp_path, demo_dir):
    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={demo_dir}", "eval.bertscore=false", "eval.bootstrap_samples=50"])
    records = load_split(demo_dir, "test")[:12]
    from pipeline.index import qa_node_id

    train = load_split(demo_dir, "train")
    kb = FakeKB({qa_node_id(r["question"], r["answer"]): type("N", (), {"metadata": {"answer": r["answer"]}})() for r in train[:20]})
    rows = {
        "vanilla": [_row(r, "no idea", rounds=False) for r in records],
        "rag_vanilla": [_row(r, r["answer"][: len(r["answer"]) // 2], ranked=["x"]) for r in records],
        "nn_answer": [_row(r, r["answer"], ranked=["x"]) for r in records],
    }
    result = _score(config, records, rows, kb)
    for name in rows:
        result["systems"][name]["status"] = "run"
    result["plan"], result["data"]["limited"] = [], True
    report, summary = cmp.render_report(result)

    assert result["retrieval_protocol"]["kind"] == "closed-book"
    table = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")] for line in summary.split("Paired")[0].splitlines() if line.startswith("| ") and "---" not in line}
    header = table["system"]
    for column in ("BLEU-4", "ROUGE-L", "EM", "token F1", "R@5", "MRR@10", "p50 latency (s)"):
        assert column in header
    assert table["nn_answer"][header.index("BLEU-4")].startswith("1.0000 [")  # prediction == reference
    assert table["nn_answer"][header.index("R@5")] == "n/a" and table["rag_vanilla"][header.index("MRR@10")] == "n/a"
    assert table["vanilla"][header.index("R@5")] == "–"  # does not retrieve
    assert table["vanilla"][header.index("p50 latency (s)")] == "0.200"  # the stages, not the batch-mode total
    assert "closed-book" in report and "no gold passage" in report
    assert "Paired bootstrap vs `rag_vanilla`" in summary and "| nn_answer |" in summary.split("Paired")[1]
    assert "(reference experiment)" not in report  # the demo data is not the reference's
    assert result["systems"]["nn_answer"]["vs_baseline"]["bleu4"]["diff"] > 0


def test_report_open_book_computes_recall_and_mrr_against_the_own_answer_node(tmp_path, demo_dir):
    from pipeline.index import qa_node_id

    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={demo_dir}", "eval.bertscore=false", "eval.bootstrap_samples=50", "data.knowledge_splits=[train, test]"])
    records = load_split(demo_dir, "test")[:6]
    own = [qa_node_id(r["question"], r["answer"]) for r in records]
    kb = FakeKB({i: type("N", (), {"metadata": {"answer": r["answer"]}})() for i, r in zip(own, records)})
    # gold at rank 1 for half of the questions, rank 2 for the others
    ranked = [[g, "x"] if i % 2 == 0 else ["x", g] for i, g in enumerate(own)]
    rows = {"rag_vanilla": [_row(r, "p", ranked=k) for r, k in zip(records, ranked)]}
    result = _score(config, records, rows, kb)
    retrieval = result["systems"]["rag_vanilla"]["retrieval"]
    assert result["retrieval_protocol"] == {**result["retrieval_protocol"], "kind": "open-book", "n_with_gold": 6}
    assert retrieval["recall@5"] == 1.0 and retrieval["mrr@10"] == pytest.approx(0.75) and retrieval["recall@1"] == 0.5
    assert "open-book" in cmp.retrieval_note(result["retrieval_protocol"])


def test_reference_rows_appear_beside_ours_scored_by_the_same_code(tmp_path, seed_dir):
    data = seed_dir / "splits"
    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={data}", "eval.bertscore=false", "eval.bootstrap_samples=20"])
    records = load_split(data, "test")
    assert set(cmp.reference_files(config, "test")) == set(cmp.REFERENCE_SYSTEMS)
    assert cmp.reference_files(config, "val") == {}
    rows = {"vanilla": [_row(r, "I do not know.", rounds=False) for r in records]}
    result = _score(config, records, rows, FakeKB({}))
    refs = result["reference"]["systems"]
    # the reference experiment's published figures (eval.score reproduces them on the same files)
    assert round(refs["rag_vanilla"]["bleu4"], 4) == 0.0515 and round(refs["vanilla"]["rougeL"], 4) == 0.1620
    result["systems"]["vanilla"]["status"] = "run"
    result["plan"], result["data"]["limited"] = [], False
    report, summary = cmp.render_report(result)
    assert "| rag_finetuned (reference experiment) |" in summary and "| vanilla (reference experiment) |" in summary
    assert "content hash" in report


def test_data_flag_moves_data_dependent_artifacts_but_shares_the_base_model(tmp_path, demo_dir, monkeypatch):
    from pipeline.models import MODEL_DIRS_ENV, check_model_source

    args = cmp.build_parser().parse_args(["--config", "tiny", "--data", str(tmp_path / "other"), "--systems", "vanilla, nn_answer", "--limit", "3"])
    config = cmp.resolve_config(args)
    base = load_config("tiny")
    assert config.data.dir == str(tmp_path / "other")
    assert config.run_dir.startswith(f"{base.run_dir}/data/other-")
    assert config.index.dir.startswith(config.run_dir) and config.eval.out.startswith(config.run_dir)
    assert config.generator.model == base.generator.model == config.finetune.tiny.output
    # the shared base LM lies outside the new run folder and must stay loadable under the user's policy
    monkeypatch.delenv(MODEL_DIRS_ENV, raising=False)
    assert check_model_source(config, config.generator.model, "generator.model") == base.generator.model
    assert check_model_source(config, config.rerank.model, "rerank.model") == config.rerank.model
    assert config.eval.systems == ["vanilla", "nn_answer"] and config.eval.limit == 3
    same = cmp.resolve_config(cmp.build_parser().parse_args(["--config", "tiny", "--data", base.data.dir]))
    assert same.run_dir == base.run_dir
    # the default profile: SmolLM2's one safetensors conversion is shared too
    smol = cmp.resolve_config(cmp.build_parser().parse_args(["--data", str(tmp_path / "other")]))
    assert smol.profile == "smollm2" and smol.run_dir.startswith("runs/smollm2/data/other-")
    assert smol.generator.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and smol.generator.convert_dir == load_config().generator.convert_dir == "runs/smollm2/models"
    with pytest.raises(ValueError, match="unknown system 'nope'"):
        cmp.chosen_systems(load_config("tiny", ["eval.systems=[vanilla, nope]"]))


# --------------------------------------------------------------------------------------------
# the whole job on the session's tiny system
# --------------------------------------------------------------------------------------------


@pytest.fixture
def compare_config(tmp_path, tiny_config):
    """tiny_config's parts as a compare run would find them: the index and the (external) base LM
    and reranker read in place; the adapters copied with the resolved config a builder writes."""
    config = load_config(
        "tiny",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.dir={tiny_config.data.dir}",
            f"index.dir={tiny_config.index.dir}",
            f"generator.model={tiny_config.generator.model}",
            f"rerank.model={tiny_config.rerank.model}",
            "generator.max_new_tokens=8",
            "rewrite.max_new_tokens=8",
            "agent.grade_threshold=0.0",
            "eval.bertscore=false",
            "eval.bootstrap_samples=50",
        ],
    )
    for source, target in (
        (tiny_config.finetune.generator.output, config.finetune.generator.output),
        (tiny_config.finetune.raft.output, config.finetune.raft.output),
        (tiny_config.rewrite.adapter, config.rewrite.adapter),
    ):
        shutil.copytree(source, target)
        save_resolved_config(config, target)
    return config


def test_compare_runs_systems_end_to_end_and_reuses_finished_ones(compare_config, tmp_path, monkeypatch):
    import dataclasses

    settings = dataclasses.replace(compare_config.eval, systems=["nn_answer", "rag_vanilla", "full"], limit=3, out=str(tmp_path / "out"))
    cfg = dataclasses.replace(compare_config, eval=settings)
    result = cmp.compare(cfg, show_progress=False, log=lambda *_: None)
    out = tmp_path / "out"
    assert {s["action"] for s in result["plan"]} <= {"reuse", "external"}
    for name in ("nn_answer", "rag_vanilla", "full"):
        rows = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and set(rows[0]) == {"question", "prediction", "reference", "sources", "trace", "timings"}
        assert (out / "predictions" / f"{name}.done.json").is_file()
    full = json.loads((out / "predictions" / "full.jsonl").read_text().splitlines()[0])
    assert full["trace"]["system"] == "full" and "reranked" in full["trace"]["rounds"][0] and full["timings"]["rerank"] > 0
    nn = json.loads((out / "predictions" / "nn_answer.jsonl").read_text().splitlines()[0])
    assert nn["prediction"] in nn["sources"][0]["text"]  # the retrieved pair's own answer
    for name in ("metrics.json", "report.md", "metrics.png", "latency.png", "ragft_config.yaml"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| full |" in report and "n/a" in report and "Paired bootstrap vs `rag_vanilla`" in report

    from pipeline.engine import RagftQueryEngine

    monkeypatch.setattr(RagftQueryEngine, "query_batch", lambda *a, **k: pytest.fail("a finished system ran again"))
    again = cmp.compare(cfg, show_progress=False, log=lambda *_: None)
    assert {row["status"] for row in again["systems"].values()} == {"reused"}
    assert again["systems"]["full"]["bleu4"] == result["systems"]["full"]["bleu4"]


def test_a_system_equal_to_another_under_the_profile_reuses_its_answers(compare_config, tmp_path, monkeypatch):
    """full-dense is full where retrieve.mode is dense, full-no-rerank is full where rerank.enabled
    is off: the same digest, so they are not generated twice; a system that differs is."""
    from pipeline.config import config_from_dict

    raw = compare_config.to_dict()
    raw["retrieve"]["mode"] = "dense"
    raw["rerank"]["enabled"] = False
    raw["eval"].update(systems=["full", "full-dense", "full-no-rerank", "full-base-generator"], limit=2, out=str(tmp_path / "out"))
    cfg = config_from_dict(raw)
    from eval import build
    from pipeline.engine import RagftQueryEngine

    # the changed settings make the plan retrain the tiny RAFT adapter; its copy serves here
    monkeypatch.setattr(build, "_build_one", lambda *a, **k: None)
    ran = []
    real = RagftQueryEngine.query_batch
    monkeypatch.setattr(RagftQueryEngine, "query_batch", lambda self, *a, **k: ran.append(self.spec.name) or real(self, *a, **k))
    result = cmp.compare(cfg, show_progress=False, log=lambda *_: None)
    assert ran == ["full", "full-base-generator"]
    status = {name: row["status"] for name, row in result["systems"].items()}
    assert status["full-dense"] == status["full-no-rerank"] == "same as full" and status["full-base-generator"] == "run"
    out = tmp_path / "out" / "predictions"
    assert (out / "full-dense.jsonl").read_text() == (out / "full.jsonl").read_text()
    assert json.loads((out / "full-no-rerank.done.json").read_text())["same_as"] == "full"
    assert result["systems"]["full-dense"]["rougeL"] == result["systems"]["full"]["rougeL"]


def test_killed_run_resumes_without_recomputing_finished_systems(compare_config, tmp_path, monkeypatch):
    profile = tmp_path / "profile.yaml"
    profile.write_text(compare_config.to_yaml(), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--config", str(profile), "--systems", "vanilla,rag_vanilla", "--limit", "8", "--out", str(out), "--set", "eval.chunk_size=1", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "eval.compare", *argv], cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache_dir = out / "cache" / "rag_vanilla"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(p.read_text().count("\n") >= 1 for p in cache_dir.glob("*.jsonl")):
                process.send_signal(signal.SIGKILL)  # mid-system: rag_vanilla has started, not finished
                break
            time.sleep(0.02)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    finished = out / "predictions" / "vanilla.jsonl"
    assert finished.is_file() and (out / "predictions" / "vanilla.done.json").is_file()
    assert not (out / "predictions" / "rag_vanilla.jsonl").exists() and not (out / "predictions" / "rag_vanilla.done.json").exists()
    done_before = sum(p.read_text().count("\n") for p in cache_dir.glob("*.jsonl"))
    assert 1 <= done_before < 8
    stamp = finished.stat().st_mtime_ns

    from pipeline.engine import RagftQueryEngine

    asked: list[str] = []
    original = RagftQueryEngine.query_batch

    def counting(self, questions, **kwargs):
        asked.extend(f"{self.spec.name}:{q}" for q in questions)
        return original(self, questions, **kwargs)

    monkeypatch.setattr(RagftQueryEngine, "query_batch", counting)
    assert cmp.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["systems"]["vanilla"]["status"] == "reused" and metrics["systems"]["rag_vanilla"]["status"] == "resumed"
    assert len(asked) == 8 - done_before and all(a.startswith("rag_vanilla:") for a in asked)
    assert finished.stat().st_mtime_ns == stamp
    assert len((out / "predictions" / "rag_vanilla.jsonl").read_text().splitlines()) == 8


@pytest.mark.slow
@pytest.mark.realweights
def test_nn_answer_reproduces_the_reference_retrieval_baseline(tmp_path, seed_dir):
    """Dense MiniLM top-1 over the train split, answering with the retrieved pair's answer: the
    reference experiment's figures (BLEU-4 0.0995, ROUGE-L 0.1975 on test). Builds the index."""
    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={seed_dir / 'splits'}", "eval.systems=[nn_answer]", "eval.bertscore=false", "eval.bootstrap_samples=50"])
    result = cmp.compare(config, show_progress=False, log=lambda *_: None)
    row = result["systems"]["nn_answer"]
    assert row["n"] == 272
    assert abs(row["bleu4"] - 0.0995) <= 0.002 and abs(row["rougeL"] - 0.1975) <= 0.002
    assert set(result["reference"]["systems"]) == set(cmp.REFERENCE_SYSTEMS)


def test_publish_copies_the_run_without_caches_and_regenerates_the_readme_table(compare_config, tmp_path):
    """eval.publish: results/<name>/ gets the metrics, report, plots and predictions (never the
    cache), a README with the command and wall times, and the project README's block its table."""
    import dataclasses

    from eval.publish import PublishError, main as publish_main, replace_block

    settings = dataclasses.replace(compare_config.eval, systems=["nn_answer", "vanilla"], limit=2, out=str(tmp_path / "out"))
    cmp.compare(dataclasses.replace(compare_config, eval=settings), show_progress=False, log=lambda *_: None)
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\n<!-- results:demo:start -->\nold table\n<!-- results:demo:end -->\n\nmore text\n")
    out = tmp_path / "results" / "demo"
    # a retrieval run kept beside the comparison is documented in the same README, from its own JSON
    from eval.retrieval import main as retrieval_main

    retrieval_args = ["--data", compare_config.data.dir, "--split", "val", "--retrievers", "bm25", "--quiet", "--set", f"run_dir={tmp_path}", "--out", str(out / "retrieval-val.json")]
    assert retrieval_main(retrieval_args) == 0
    recorded = json.loads((out / "retrieval-val.json").read_text())["run"]
    assert recorded["command"] == "python -m eval.retrieval " + " ".join(retrieval_args) and recorded["seconds"] > 0
    assert publish_main([str(tmp_path / "out"), "--out", str(out), "--readme", str(readme), "--command", "python -m eval.compare --limit 2"]) == 0
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["README.md", "nn_answer.done.json", "nn_answer.jsonl", "vanilla.done.json", "vanilla.jsonl"]
    assert "python -m eval.compare --limit 2" in (out / "predictions" / "README.md").read_text() and "| nn_answer | 2 |" in (out / "predictions" / "README.md").read_text()
    assert {"metrics.json", "report.md", "metrics.png", "latency.png", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "cache").exists()
    page = (out / "README.md").read_text()
    assert "python -m eval.compare --limit 2" in page and "git revision" in page and "| nn_answer | 2 |" in page
    assert "## retrieval-val.json: `eval.retrieval`, open-book, val split" in page and recorded["command"] in page and "| bm25 | " in page
    text = readme.read_text()
    assert "old table" not in text and "| nn_answer |" in text and text.endswith("<!-- results:demo:end -->\n\nmore text\n")
    # --readme-only regenerates the table from the committed metrics.json alone
    readme.write_text("<!-- results:demo:start -->\n<!-- results:demo:end -->\n")
    assert publish_main(["--readme-only", "--out", str(out), "--readme", str(readme)]) == 0
    assert "| vanilla |" in readme.read_text()
    # the reranker and rewriter comparisons kept beside it fill the README's <name>-retrieval block
    ci = lambda x: [x - 0.05, x + 0.05]  # noqa: E731
    summary = lambda m: {"recall@1": m - 0.1, "recall@5": m + 0.1, "mrr@10": m, "n": 9, "ci95": {"mrr@10": ci(m)}}  # noqa: E731
    test = {"diff": 0.02, "ci95_low": 0.01, "ci95_high": 0.03, "p_value": 0.01}
    (out / "rerankers-val.json").write_text(json.dumps({
        "protocol": "open-book", "split": "val", "n": 9, "candidates": 20, "first_stage": {"name": "ft-dense", **summary(0.7)}, "run": {"command": "python -m rerank.evaluate --split val"},
        "rerankers": {"ce-x": {"weights": {"0.0": {"mrr@10": 0.6}, "0.5": {"mrr@10": 0.72}}, "best_weight": 0.5, "at_best": summary(0.72), "delta_vs_first_stage": test, "ms_per_query_p50": 80.0}},
    }))
    (out / "rewriters-val.json").write_text(json.dumps({
        "protocol": "open-book", "split": "val", "corpus_size": 30, "run": {"command": "python -m finetune.rewriter --evaluate-only"},
        "results": {"none/dense": summary(0.7), "hyde-lora/dense": summary(0.72)}, "paired_vs_none": {"hyde-lora/dense": test}, "seconds": {"hyde-lora": 12.5},
        "recommended": {"rewrite.mode": "hyde", "variant": "hyde-lora", "retriever": "dense", "adapter": "x"},
    }))
    readme.write_text("<!-- results:demo:start -->\n<!-- results:demo:end -->\n<!-- results:demo-retrieval:start -->\nold\n<!-- results:demo-retrieval:end -->\n")
    assert publish_main(["--readme-only", "--out", str(out), "--readme", str(readme)]) == 0
    block = readme.read_text().split("<!-- results:demo-retrieval:start -->")[1]
    assert "old" not in block and "#### rerankers-val.json: `rerank.evaluate`, open-book, val split" in block and "python -m rerank.evaluate --split val" in block
    assert "| ce-x | 0.600 | 0.720 | 0.5 | 0.720 [0.670, 0.770] | 0.620 | +0.0200 [+0.0100, +0.0300] | 80.0 |" in block
    assert "| hyde-lora | dense | 0.620 | 0.820 | 0.720 [0.670, 0.770] | +0.020 [+0.010, +0.030] | 12.5 |" in block and "rewrite.mode=hyde with hyde-lora" in block
    assert "retrieval-val.json" not in block  # eval.retrieval's runs stay in results/<name>/README.md
    page = (out / "README.md").read_text()  # ... whose retrieval sections --readme-only regenerates, the head kept
    assert page.startswith("# demo: `eval.compare`") and page.count("## retrieval-val.json:") == 1 and "## rerankers-val.json: `rerank.evaluate`" in page and "## rewriters-val.json: `finetune.rewriter`" in page
    with pytest.raises(PublishError, match="has no block <!-- results:seed:start -->"):
        replace_block("no markers", "seed", "table")
    assert publish_main([str(tmp_path / "nothing"), "--out", str(out), "--readme", str(readme)]) == 2


def test_the_kv_cache_changes_the_digest_of_lm_systems_only_when_set():
    """generator.cache_implementation enters a system's digest only when set, so the runs made
    with the dynamic default keep their digests (and their finished answers); so does the removed
    generator.quantize, at the value those runs had."""
    from pipeline.systems import get_system

    config = load_config("smollm2", ["generator.cache_implementation=null"])
    append = load_config("smollm2", ["generator.cache_implementation=append"])
    assert "cache_implementation" not in cmp.system_settings(config, get_system("full", config))["generator"]
    assert cmp.system_settings(config, get_system("full", config))["generator"]["quantize"] == "none"
    assert cmp.system_digest(append, get_system("full", append)) != cmp.system_digest(config, get_system("full", config))
    assert cmp.system_digest(append, get_system("nn_answer", append)) == cmp.system_digest(config, get_system("nn_answer", config))


def test_the_hyde_question_weight_changes_the_digest_of_rewriting_systems_only_when_set():
    """rewrite.hyde_question_weight null (the plain mean) leaves every digest as it was; a weight
    changes the digest of the systems that rewrite, not of those that do not."""
    import dataclasses

    from pipeline.systems import get_system

    config = load_config("smollm2", ["rewrite.mode=hyde"])
    weighted = dataclasses.replace(config, rewrite=dataclasses.replace(config.rewrite, hyde_question_weight=0.9))
    assert "hyde_question_weight" not in cmp.system_settings(config, get_system("full", config))["rewrite"]
    assert cmp.system_settings(weighted, get_system("full", weighted))["rewrite"]["hyde_question_weight"] == 0.9
    assert cmp.system_digest(weighted, get_system("full", weighted)) != cmp.system_digest(config, get_system("full", config))
    for name in ("rag_vanilla", "nn_answer"):
        assert cmp.system_digest(weighted, get_system(name, weighted)) == cmp.system_digest(config, get_system(name, config)), name


def test_the_copy_bias_and_a_grade_calibration_change_digests_only_where_read_and_only_when_set():
    """generator.copy_bias changes the answers of the systems that read the RAFT generator, and
    agent.calibration those with the agent loop; unset, neither enters a digest."""
    import dataclasses

    from pipeline.systems import get_system

    config = load_config("smollm2", ["agent.calibration=null", "generator.copy_bias=0"])
    biased = dataclasses.replace(config, generator=dataclasses.replace(config.generator, copy_bias=2.0))
    graded = dataclasses.replace(config, agent=dataclasses.replace(config.agent, calibration="grade.json"))
    assert "copy_bias" not in cmp.system_settings(config, get_system("full", config))["generator"]
    assert "calibration" not in cmp.system_settings(config, get_system("full", config))["agent"]
    for name in ("full", "full-no-rerank", "full-no-agent"):
        assert cmp.system_digest(biased, get_system(name, biased)) != cmp.system_digest(config, get_system(name, config)), name
    for name in ("rag_finetuned", "full-plain-generator", "full-base-generator", "vanilla"):
        assert cmp.system_digest(biased, get_system(name, biased)) == cmp.system_digest(config, get_system(name, config)), name
    assert cmp.system_digest(graded, get_system("full", graded)) != cmp.system_digest(config, get_system("full", config))
    assert cmp.system_digest(graded, get_system("full-no-agent", graded)) == cmp.system_digest(config, get_system("full-no-agent", config))


def test_the_fine_tuned_embedders_backend_reaches_its_index_and_the_digests_of_its_systems():
    """index.finetuned_backend: the fine-tuned index (and only it) is embedded through it; full's
    digest follows it, a baseline's does not; null keeps index.backend (and every digest)."""
    import dataclasses

    from pipeline.index import finetuned_embedder_config
    from pipeline.systems import get_system

    config = load_config("smollm2", ["index.finetuned_backend=null"])
    int8 = dataclasses.replace(config, index=dataclasses.replace(config.index, finetuned_backend="onnx-int8"))
    assert finetuned_embedder_config(int8, check=False).index.backend == "onnx-int8" and int8.index.backend == "torch"
    assert finetuned_embedder_config(config, check=False).index.backend == config.index.backend
    digest = lambda c, name: cmp.system_digest(c, get_system(name, c))  # noqa: E731
    assert digest(int8, "full") != digest(config, "full") and digest(int8, "rag_vanilla") == digest(config, "rag_vanilla")
    same = dataclasses.replace(config, index=dataclasses.replace(config.index, finetuned_backend=config.index.backend))
    assert digest(same, "full") == digest(config, "full")
