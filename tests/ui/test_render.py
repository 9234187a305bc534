"""Unit tests of the chat app's pure parts: escaping, sources, trace, timings, feedback, uploads,
config resolution and the background ingestion runner (with a fake ingestion function)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from pipeline.config import ConfigError, load_config
from pipeline.index import WriterLock
from ui import render
from ui.backend import IngestionRunner, UploadRefused, append_jsonl, check_upload, resolve_settings, safe_filename

# ------------------------------------------------------------------ escaping


def test_escape_markdown_neutralises_html_markdown_and_streamlit_directives():
    text = "<script>alert(1)</script> **bold** :red[x] $x$ [link](http://e) &amp;"
    escaped = render.escape_markdown(text)
    for raw in ("<script>", "**", ":red[", "$x$", "](", "&amp;"):
        assert raw not in escaped
    assert escaped.startswith(r"\<script\>alert\(1\)\<\/script\>")
    # removing the escapes gives back exactly the original characters
    assert escaped.replace("\\", "") == text.replace("\\", "")


def test_escape_markdown_keeps_line_breaks_and_letters():
    assert render.escape_markdown("line one\nline two") == "line one  \nline two"
    assert render.escape_markdown("plain words 123") == "plain words 123"


def test_answer_markdown_turns_citations_into_code_chips_and_escapes_the_rest():
    md = render.answer_markdown("B-trees stay balanced [1], see <b>this</b> [2].")
    assert md == r"B\-trees stay balanced `[1]`\, see \<b\>this\<\/b\> `[2]`\."
    assert render.answer_markdown("partial", cursor=True).endswith(" ▌")
    assert render.citations("a [2] b [1] c [2]") == [2, 1]


def test_scores_and_seconds_are_formatted_for_people():
    assert render.fmt_score(None) == "–"
    assert render.fmt_score(0.71234) == "0.712"
    assert render.fmt_score(0.0327868, 4) == "0.0328"
    assert render.fmt_score(0.00123456) == "0.00123"  # tiny values keep 3 significant digits
    assert render.fmt_seconds(0.1234) == "123 ms"
    assert render.fmt_seconds(2.5) == "2.50 s"


# ------------------------------------------------------------------ sources and candidates


def _qa(node_id, score, **meta):
    base = {"id": node_id, "question": f"q {node_id}?", "answer": "a", "source": "train.jsonl", "split": "train", "kind": "qa"}
    return NodeWithScore(node=TextNode(id_=node_id, text=f"Question: q {node_id}?\nAnswer: a", metadata={**base, **meta}), score=score)


def test_source_rows_of_reranked_passages_carry_both_rankings():
    hits = [
        _qa("qa-b", 0.9, retrieval_rank=3, retrieval_score=0.031, rerank_score=0.9, rerank_rank=1, dense_rank=2, bm25_rank=None),
        _qa("qa-a", 0.4, retrieval_rank=1, retrieval_score=0.033, rerank_score=0.4, rerank_rank=2, dense_rank=1, bm25_rank=1),
    ]
    rows = render.source_rows(hits)
    assert [r["n"] for r in rows] == [1, 2]
    assert rows[0]["label"] == "QA qa-b" and rows[0]["id"] == "qa-b"
    assert (rows[0]["retrieval_rank"], rows[0]["retrieval_score"], rows[0]["rerank_score"], rows[0]["rerank_rank"]) == (3, 0.031, 0.9, 1)
    assert rows[1]["text"] == "Question: q qa-a?\nAnswer: a"
    header = render.source_header(rows[0])
    assert header.startswith("`[1]` **QA qa\\-b**")
    assert "retrieval rank 3" in header and "rerank score 0\\.900 · rank 1" in header and "dense \\#2" in header
    assert "BM25" not in header  # not returned by BM25: no rank shown


def test_source_rows_without_reranker_use_list_position_and_retriever_score():
    rows = render.source_rows([_qa("qa-x", 0.8, dense_rank=1), _qa("qa-y", 0.7, dense_rank=2)])
    assert [(r["retrieval_rank"], r["retrieval_score"], r["rerank_score"]) for r in rows] == [(1, 0.8, None), (2, 0.7, None)]
    assert "rerank" not in render.source_header(rows[0])


def test_document_chunks_are_labelled_with_file_and_heading():
    meta = {"source": "/x/guide.md", "file_name": "guide.md", "heading": "Install <b>now</b>", "kind": "document"}
    hit = NodeWithScore(node=TextNode(id_="doc-1", text="<script>alert(1)</script>", metadata=meta), score=0.5)
    row = render.source_rows([hit])[0]
    assert row["label"] == "guide.md › Install <b>now</b>"
    assert row["text"] == "<script>alert(1)</script>"  # raw: the app shows it with st.text
    assert "\\<b\\>" in render.source_header(row)
    assert render.source_label({"file_name": "notes.txt", "kind": "document"}) == "notes.txt"


def test_candidate_tables_show_the_list_before_reranking_and_each_fate():
    rounds = [
        {
            "round": 1,
            "mode": "hyde",
            "retrieved": [{"id": "a", "score": 0.033, "dense_rank": 1, "bm25_rank": 2}, {"id": "b", "score": 0.031, "dense_rank": 3, "bm25_rank": None}, {"id": "c", "score": 0.02}],
            "reranked": [{"id": "b", "rerank_score": 0.9, "rerank_rank": 1}, {"id": "a", "rerank_score": 0.2, "rerank_rank": 2}],
        },
        {"round": 2, "mode": "multi", "retrieved": [{"id": "c", "score": 0.5}]},
    ]
    tables = render.candidate_tables(rounds, label_of=str.upper)
    assert [t["round"] for t in tables] == [1, 2] and tables[1]["reranked"] is False
    first = tables[0]["rows"]
    assert [(r["rank"], r["source"], r["rerank #"]) for r in first] == [(1, "A", 2), (2, "B", 1), (3, "C", None)]
    assert first[1]["rerank score"] == 0.9 and first[0]["BM25 #"] == 2


# ------------------------------------------------------------------ trace and timings


METADATA = {
    "route": "rewrite.mode",
    "rounds": [
        {
            "round": 1,
            "mode": "hyde",
            "rewrite": {"mode": "hyde", "texts": ["A B-tree is <balanced>."], "method": "llm"},
            "retrieved": [{"id": "a"}, {"id": "b"}],
            "reranked": [{"id": "a", "rerank_score": 0.12}, {"id": "b", "rerank_score": 0.05}],
            "grade": {"decision": "retry", "best": 0.12, "threshold": 0.3, "next_mode": "multi"},
        },
        {
            "round": 2,
            "mode": "multi",
            "rewrite": {"mode": "multi", "texts": ["p1", "p2"], "method": "fallback"},
            "retrieved": [{"id": "c"}],
            "reranked": [{"id": "c", "rerank_score": 0.8}],
            "grade": {"decision": "accept", "best": 0.8, "threshold": 0.3},
        },
    ],
    "timings": {"rewrite": 0.2, "retrieve": 0.05, "rerank": 0.1, "generate": 1.5, "total": 0.4},
}


def test_round_lines_summarise_the_agent_loop_compactly():
    lines = render.round_lines(METADATA)
    assert lines == [
        "Round 1 · rewrite hyde · 2 candidates · reranked, best 0.120 · weak: best 0.120 < 0.300 → retry with multi",
        "Round 2 · rewrite multi (fallback) · 1 candidates · reranked, best 0.800 · accepted: best rerank score 0.800 ≥ threshold 0.300",
    ]
    assert render.grade_text({"decision": "not_found", "best": 0.1, "threshold": 0.3}).endswith("after the last round → not found")
    assert render.grade_text({"decision": "accept", "reason": "no agent loop"}) == "accept (no agent loop)"
    calibrated = {"best": 0.2, "threshold": 0.45, "features": {"ql": -2.0, "dense": 0.3}}
    assert render.grade_text({"decision": "accept", **calibrated, "best": 0.6}) == "accepted: P(answerable) 0.600 ≥ threshold 0.450"
    assert render.grade_text({"decision": "not_found", **calibrated}) == "weak: best P(answerable) 0.200 < 0.450 after the last round → not found"
    assert render.not_used_rows({"not_used": [{"id": "a", "rerank_score": 0.1, "text": "t"}]}) == [{"id": "a", "score": 0.1, "text": "t"}]
    assert render.not_used_rows({}) == []
    weak = {"low_confidence": True, "rounds": [{"grade": {"decision": "low_confidence", **calibrated}}]}
    assert render.low_confidence_text(weak) == "The knowledge base may not hold the answer (P(answerable) 0.200 < 0.450): this answer comes from the closest passages; check them."
    assert render.low_confidence_text({"low_confidence": False}) == ""
    # as the engine writes it: the features on the round record, beside its grade
    engine_shaped = {"low_confidence": True, "rounds": [{"features": calibrated["features"], "grade": {"decision": "low_confidence", "best": 0.2, "threshold": 0.45}}]}
    assert render.low_confidence_text(engine_shaped) == render.low_confidence_text(weak)
    assert render.round_lines({"rounds": [{"mode": "condense", **engine_shaped["rounds"][0]}]})[0].endswith("weak: best P(answerable) 0.200 < 0.450 after the last round → answered from the best round (low confidence)")


def test_rewrite_blocks_name_what_the_rewriter_wrote():
    blocks = render.rewrite_blocks(METADATA)
    assert [(b["round"], b["title"], b["texts"]) for b in blocks] == [(1, "Hypothetical passage", ["A B-tree is <balanced>."]), (2, "Phrasings", ["p1", "p2"])]


def test_timing_text_lists_stages_in_pipeline_order_and_the_wall_total():
    assert render.timing_text(METADATA["timings"], wall=1.9) == "rewrite 200 ms · retrieve 50 ms · rerank 100 ms · generate 1.50 s · total 1.90 s"
    assert render.timing_text({"retrieve": 0.01, "total": 0.02}) == "retrieve 10 ms · total 20 ms"
    assert render.timing_text({"condense": 0.25, "retrieve": 0.01, "total": 0.3}) == "condense 250 ms · retrieve 10 ms · total 300 ms"
    assert render.timing_text({"condense": 0.0, "retrieve": 0.01}) == "retrieve 10 ms"  # the gate kept the message: nothing ran


def test_searched_as_says_how_the_question_was_read():
    condensed = {"standalone_question": "How are B-trees balanced?", "condensed": True, "condense": {"reason": "refers back: 'it'", "method": "llm"}}
    assert render.searched_as(condensed) == "searched as: How are B-trees balanced? (rewritten by the condenser; refers back: 'it')"
    fallback = {**condensed, "condense": {"reason": "elliptical: no subject of its own", "method": "fallback"}}
    assert "the previous question + this message" in render.searched_as(fallback)
    typed = {"standalone_question": "What is a B-tree?", "condensed": False, "condense": {"reason": "first turn: one clean question"}}
    assert render.searched_as(typed) == "searched as: What is a B-tree? (the message as typed; first turn: one clean question)"
    assert render.searched_as({}) == ""  # a single-question engine's metadata
    compound = {"standalone_question": "What is Raft?\nWhat is a quorum?", "condensed": True, "condense": {"reason": "may ask two things: 'also'", "method": "llm"}}
    assert render.searched_as(compound).startswith("searched as: What is Raft? | What is a quorum? (rewritten by the condenser")


# ------------------------------------------------------------------ feedback


def test_feedback_rows_are_appended_as_jsonl(tmp_path):
    turn = {"question": "What is <x>?", "answer": "It is y [1].", "system": "full", "sources": render.source_rows([_qa("qa-1", 0.7, retrieval_rank=2, retrieval_score=0.03, rerank_score=0.7, rerank_rank=1)])}
    path = tmp_path / "deep" / "feedback.jsonl"
    append_jsonl(path, render.feedback_record(turn, 1, profile="tiny", timestamp="t1"))
    append_jsonl(path, render.feedback_record(turn, 0, profile="tiny", timestamp="t2"))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["rating"] for r in rows] == ["up", "down"]
    assert rows[0]["question"] == "What is <x>?" and rows[0]["answer"] == "It is y [1]." and rows[0]["system"] == "full"
    assert rows[0]["searched_as"] == "What is <x>?"  # no metadata: searched as typed
    assert rows[0]["sources"] == [{"n": 1, "id": "qa-1", "label": "QA qa-1", "source": "train.jsonl", "retrieval_rank": 2, "retrieval_score": 0.03, "rerank_score": 0.7, "rerank_rank": 1}]
    with pytest.raises(ValueError, match="rating must be 0"):
        render.feedback_record(turn, 3, profile="tiny", timestamp="t")


# ------------------------------------------------------------------ uploads


def test_check_upload_accepts_documents_and_refuses_the_rest():
    assert check_upload("notes.MD", 10, 20) == "notes.MD"
    with pytest.raises(UploadRefused, match=r"tool.exe: unsupported file type '.exe'; upload .md, .markdown, .txt, .pdf files"):
        check_upload("tool.exe", 10, 20)
    with pytest.raises(UploadRefused, match="unsupported file type '\\(no extension\\)'"):
        check_upload("README", 10, 20)
    with pytest.raises(UploadRefused, match=r"big.pdf: 20.5 MB is over the upload limit of 20 MB \(ui.upload_max_mb\)"):
        check_upload("big.pdf", int(20.5 * 1024 * 1024), 20)
    with pytest.raises(UploadRefused, match="empty"):
        check_upload("empty.txt", 0, 20)


def test_safe_filename_drops_folders_and_odd_characters():
    assert safe_filename("../../etc/passwd.md") == "passwd.md"
    assert safe_filename("C:\\Users\\me\\my notes (1).txt") == "my_notes_1_.txt"
    assert safe_filename(".hidden.md") == "hidden.md"
    assert safe_filename("...") == "upload"


# ------------------------------------------------------------------ config resolution


def test_flags_win_over_environment_and_default_is_smollm2():
    settings = resolve_settings(["--config", "cpu", "--set", "retrieve.top_k=9"], {"RAGFT_CONFIG": "tiny", "RAGFT_SET": "rerank.top_n=3 'generator.max_new_tokens=7'"})
    assert (settings.profile, settings.origin) == ("cpu", "--config")
    assert settings.overrides == ("rerank.top_n=3", "generator.max_new_tokens=7", "retrieve.top_k=9")
    env_only = resolve_settings(["-x", "tests/ui"], {"RAGFT_CONFIG": "tiny", "RAGFT_SET": "ui.upload_max_mb=5"})
    assert (env_only.profile, env_only.origin) == ("tiny", "RAGFT_CONFIG")
    assert env_only.load().ui.upload_max_mb == 5
    default = resolve_settings([], {})
    assert (default.profile, default.origin, default.overrides) == (None, "default", ())
    assert default.load().profile == "smollm2"
    assert resolve_settings(["--help"], {}).show_help


def test_bad_environment_overrides_name_the_variable():
    with pytest.raises(ConfigError, match="RAGFT_SET="):
        resolve_settings([], {"RAGFT_SET": "a='b"})
    with pytest.raises(ConfigError, match="unknown key 'ui.upload_mb'"):
        resolve_settings([], {"RAGFT_SET": "ui.upload_mb=3"}).load()


# ------------------------------------------------------------------ the ingestion runner (fake ingestion)


def _config(tmp_path, *extra):
    return load_config("tiny", [f"run_dir={tmp_path}", *extra])


class FakeReport:
    skipped_files: list = []

    def summary(self):
        return "1 documents; nodes: 1 added"


def test_runner_ingests_in_background_and_refuses_a_second_upload_meanwhile(tmp_path):
    release, calls = threading.Event(), []

    def slow_ingest(config, **kwargs):
        calls.append(kwargs)
        assert release.wait(10)
        return FakeReport()

    runner = IngestionRunner(_config(tmp_path), ingest_fn=slow_ingest, embed_model_factory=lambda: "embedder")
    status = runner.submit([("../a b.md", b"# A\nalpha")])
    assert status.running and status.files == ["a_b.md"]
    assert (tmp_path / "uploads" / "a_b.md").read_bytes() == b"# A\nalpha"
    with pytest.raises(UploadRefused, match=r"an ingestion of a_b.md is still running .*wait for it to finish"):
        runner.submit([("b.md", b"beta")])
    assert not (tmp_path / "uploads" / "b.md").exists()
    release.set()
    done = runner.wait(10)
    assert done.state == "done" and "added a_b.md" in done.message
    assert calls[0]["sources"] == [str(tmp_path / "uploads")] and calls[0]["embed_model"] == "embedder"
    runner.submit([("b.md", b"beta")])  # free again
    assert runner.wait(10).state == "done" and runner.status().job == 2


def test_runner_refuses_while_another_process_holds_the_writer_lock(tmp_path):
    config = _config(tmp_path)
    runner = IngestionRunner(config, ingest_fn=lambda *a, **k: pytest.fail("must not ingest"))
    with WriterLock(config.index.dir):
        with pytest.raises(UploadRefused, match=r"cannot add documents now: index .* is being written by pid \d+"):
            runner.submit([("a.md", b"alpha")])
    assert not (tmp_path / "uploads" / "a.md").exists()


def test_runner_reports_a_failed_ingestion_and_removes_the_new_upload(tmp_path):
    def broken(config, **kwargs):
        raise RuntimeError("disk full")

    runner = IngestionRunner(_config(tmp_path), ingest_fn=broken, embed_model_factory=lambda: None)
    runner.submit([("a.md", b"alpha")])
    status = runner.wait(10)
    assert status.state == "failed" and "RuntimeError: disk full" in status.message
    assert not (tmp_path / "uploads" / "a.md").exists()
    assert status.finished is not None and status.finished >= status.started


def test_runner_keeps_profile_sources_and_adds_the_uploads(tmp_path):
    config = _config(tmp_path, f"index.sources=[{tmp_path / 'docs'}]")
    assert IngestionRunner(config).sources() == [str(tmp_path / "docs"), str(tmp_path / "uploads")]
    # constructing a runner loads and writes nothing
    assert not (tmp_path / "uploads").exists()


# ------------------------------------------------------------------ server settings


def test_streamlit_config_serves_loopback_with_xsrf_protection(repo_root):
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    settings = tomllib.loads((repo_root / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert settings["server"]["address"] == "127.0.0.1"
    assert settings["server"]["enableXsrfProtection"] is True and settings["server"]["enableCORS"] is True
    assert settings["browser"]["gatherUsageStats"] is False
    assert settings["client"]["showErrorDetails"] in ("type", "none")  # no tracebacks in the page


def test_an_answer_without_marks_points_at_the_passages_it_rests_on():
    passages = [
        "A B-tree keeps keys sorted in wide nodes, so lookups touch few disk pages.",
        "A process has its own address space; threads of one process share memory and are cheaper to switch.",
        "TCP retransmits lost segments after a timeout.",
    ]
    answer = "Threads share the memory of their process, while each process has its own address space."
    assert render.supporting_sources(answer, passages) == [2]
    assert render.citation_caption(answer, passages) == "supported by [2] (word overlap; the answer has no [n] marks)"
    # the answer's own marks win, and nothing is attributed to an unrelated or empty answer
    assert render.citation_caption("Threads share memory [2][3].", passages) == "cites [2], [3]"
    assert render.supporting_sources("Quantum chromodynamics describes gluons.", passages) == []
    assert render.citation_caption("", passages) == "" and render.supporting_sources(answer, []) == []
    # best first, at most two
    both = "A process has its own address space and a B-tree keeps keys sorted in nodes."
    assert render.supporting_sources(both, passages, min_overlap=0.2) == [1, 2]  # 5 of its 9 content words, then 4


def test_runner_ingests_into_the_finetuned_embedders_index_too_when_full_searches_it(tmp_path):
    """index.finetuned_embedder: `full` searches a second index; an upload must reach both, each
    embedded by its own embedder, and the base index's report is the one shown."""
    from pipeline.index import finetuned_embedder_config

    config = _config(tmp_path, "index.finetuned_embedder=true")
    calls = []

    def recording_ingest(target, **kwargs):
        calls.append((target.index.dir, target.index.embed_model, kwargs["embed_model"]))
        return FakeReport()

    made = iter(["base-embedder", "finetuned-embedder"])
    runner = IngestionRunner(config, ingest_fn=recording_ingest, embed_model_factory=lambda: next(made))
    runner.submit([("a.md", b"alpha")])
    assert runner.wait(10).state == "done"
    assert calls == [(config.index.dir, config.index.embed_model, "base-embedder")]  # the second index is not built yet: nothing to keep in step

    finetuned = finetuned_embedder_config(config, check=False)
    Path(finetuned.index.dir).mkdir(parents=True)
    (Path(finetuned.index.dir) / "manifest.json").write_text("{}")
    calls.clear()
    runner.submit([("b.md", b"beta")])
    assert runner.wait(10).state == "done"
    assert calls == [(config.index.dir, config.index.embed_model, "base-embedder"), (finetuned.index.dir, config.finetune.embedder.output, "finetuned-embedder")]


def test_missing_parts_follow_the_system_as_it_runs_under_the_profile(tmp_path):
    """With rerank.enabled off `full` needs no cross-encoder; with index.finetuned_embedder on it
    needs the fine-tuned embedder's index, and the message says how to build it."""
    from pipeline.engine import ArtifactMissingError
    from pipeline.systems import get_system
    from ui.backend import missing_parts

    config = _config(tmp_path, "index.finetuned_embedder=true", "rerank.enabled=false", "generator.backend=openai", "generator.api_base=http://127.0.0.1:1/v1")
    asked = []

    class Parts:  # what missing_parts reads of pipeline.engine.Components
        def __init__(self, config):
            self.config = config

        def adapter_path(self, kind):
            asked.append(kind)

        def reranker(self):
            raise ArtifactMissingError("the cross-encoder reranker is missing")

    problems = missing_parts(Parts(config), get_system("full", config))
    assert any("no index at " + config.index.dir in p for p in problems)
    assert any(f"no index at {config.index.finetuned_dir}" in p and "python -m eval.compare" in p for p in problems)
    assert not any("cross-encoder" in p for p in problems) and "raft" in asked
    # the same system with the reranker on asks for it; on the base index it does not need the second index
    on = _config(tmp_path, "rerank.enabled=true", "generator.backend=openai", "generator.api_base=http://127.0.0.1:1/v1")
    problems = missing_parts(Parts(on), get_system("full", on))
    assert any("cross-encoder" in p for p in problems) and not any(on.index.finetuned_dir in p for p in problems)


def test_support_text_warns_only_for_an_unsupported_answer():
    assert render.support_text({}) == "" and render.support_text({"support": {"supported": True, "score": 0.9}}) == ""
    flagged = render.support_text({"support": {"supported": False, "score": 0.21, "passage": 2, "action": "flagged"}})
    assert "21%" in flagged and "[2]" in flagged and "model's own text" in flagged
    assert "quoted instead" in render.support_text({"support": {"supported": False, "score": 0.1, "passage": 1, "action": "quoted"}})
