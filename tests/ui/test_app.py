"""The chat app (ui/app.py) driven by Streamlit's AppTest on the tiny system of tests/conftest.py.

The app gets its config the documented way (RAGFT_CONFIG naming a profile file): the `ui_system`
fixture (tests/ui/conftest.py), the session's tiny system with a private copy of its index and an
upload limit of 1 MB so the over-limit case stays small."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.config import ConfigError, load_config
from pipeline.index import WriterLock
from app_driver import APP, TIMEOUT, ask, open_app
from ui import render



def plain(markdown: str) -> str:
    """The characters an escaped markdown string shows (ui.render.escape_markdown undone)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def wait_for_ingestion(at: AppTest, timeout: float = 120) -> str:
    """Rerun the page (what the status fragment does every second in a browser) until the
    background ingestion reports its end; returns the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        done = [e.value for e in at.sidebar.success] + [e.value for e in at.sidebar.error]
        if done:
            return done[-1]
        time.sleep(0.5)
    raise AssertionError("the ingestion did not finish in time")


# ------------------------------------------------------------------ asking


def test_answer_sources_trace_system_switch_and_feedback(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    assert "Profile **tiny** (from RAGFT_CONFIG)" in [m.value for m in at.sidebar.markdown]
    assert at.selectbox(key="system").value == "full"  # ui.default_system

    # nn_answer: the answer IS the retrieved pair's answer, so page and source must agree
    ask(at, "How does a hash table handle collisions?", "nn_answer")
    reply = at.chat_message[1]
    assert reply.name == "assistant"
    (passage,) = [t.value for t in reply.text]
    assert passage.startswith("Question: ") and "collision" in passage.lower()
    assert reply.markdown[0].value == render.answer_markdown(passage.split("\nAnswer: ", 1)[1])
    assert [e.label for e in reply.expander] == ["Sources (1)", "Trace: rewrite, rounds, timings"]
    header = reply.markdown[1].value
    assert header.startswith("`[1]` **QA qa\\-") and "retrieval rank 1 · score 0\\." in header
    assert any(plain(c.value).startswith("system nn_answer · ") and "retrieve" in c.value for c in reply.caption)

    # switch to full: rewrite -> hybrid -> rerank -> grade -> RAFT generator, and the history stays
    ask(at, "What is a B-tree?", "full")
    assert len(at.chat_message) == 4 and at.chat_message[0].markdown[0].value == "How does a hash table handle collisions\\?"
    reply = at.chat_message[3]
    turn = at.session_state["turns"][1]
    assert turn["system"] == "full" and turn["error"] is None
    caption = next(plain(c.value) for c in reply.caption if plain(c.value).startswith("system full"))
    for stage in ("rewrite", "retrieve", "rerank", "generate", "total"):
        assert f"{stage} " in caption
    headers = [m.value for m in reply.markdown if m.value.startswith("`[")]
    assert len(headers) == len(turn["sources"]) == config.rerank.top_n
    assert all("rerank score 0\\." in h and "retrieval rank" in h for h in headers)
    assert [int(re.search(r"rerank score \S+ · rank (\d+)", h).group(1)) for h in headers] == list(range(1, config.rerank.top_n + 1))
    assert [t.value for t in reply.text][: len(turn["sources"])] == [s["text"] for s in turn["sources"]]
    trace = [m.value for m in reply.markdown if m.value.startswith("- Round")]
    assert trace and trace[0].startswith("- Round 1 · rewrite ")

    # the candidates before reranking, behind a toggle
    tables_before = len(reply.dataframe)
    at.toggle(key="candidates-1").set_value(True).run()
    reply = at.chat_message[3]
    assert len(reply.dataframe) == tables_before + 1
    table = reply.dataframe[0].value
    retrieved = turn["metadata"]["rounds"][0]["retrieved"]
    assert list(table["id"]) == [r["id"] for r in retrieved]
    assert table["rerank #"].notna().sum() == len(turn["metadata"]["rounds"][0]["reranked"])

    # thumbs up -> one JSONL row with question, answer, system and sources
    at.feedback(key="feedback-1").set_value(1).run()
    assert not at.exception
    rows = [json.loads(line) for line in Path(config.ui.feedback_file).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1
    assert (rows[0]["rating"], rows[0]["question"], rows[0]["system"], rows[0]["answer"]) == ("up", "What is a B-tree?", "full", turn["answer"])
    assert [s["id"] for s in rows[0]["sources"]] == [s["id"] for s in turn["sources"]]


# ------------------------------------------------------------------ uploads


SECRET_DOC = b"""# Zorblax flux capacitor

The zorblax flux capacitor stores quantum tachyons inside a frozen lattice of mirrors.
Never hand it to a browser: <script>alert(1)</script>
"""


def test_uploaded_markdown_becomes_retrievable_and_its_html_stays_text(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    at.file_uploader(key="uploads").upload("zorblax notes.md", SECRET_DOC, "text/markdown").run()
    message = wait_for_ingestion(at)
    assert message.startswith("added zorblax_notes.md: passages: 1 added, ") and message.endswith(" s)"), message
    assert (Path(config.ui.uploads_dir) / "zorblax_notes.md").read_bytes() == SECRET_DOC

    ask(at, "What does the zorblax flux capacitor store?", "nn_answer")
    reply = at.chat_message[-1]
    header = reply.markdown[1].value
    assert header.startswith("`[1]` **zorblax\\_notes\\.md › Zorblax flux capacitor**"), header
    (passage,) = [t.value for t in reply.text]
    assert "quantum tachyons" in passage and "<script>alert(1)</script>" in passage  # shown as literal text
    answer = reply.markdown[0].value
    assert "<script>" not in answer and "\\<script\\>alert\\(1\\)\\<\\/script\\>" in answer

    # the same file again: idempotent, nothing added
    at.file_uploader(key="uploads").clear().upload("zorblax notes.md", SECRET_DOC, "text/markdown").run()
    again = wait_for_ingestion(at)
    assert again.startswith("added zorblax_notes.md: passages: 0 added, "), again


def test_oversized_and_unsupported_uploads_are_refused(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    big = b"# big\n" + b"x" * (1024 * 1024 + 10)  # over ui.upload_max_mb = 1
    at.file_uploader(key="uploads").upload("big.md", big, "text/markdown").upload("tool.exe", b"MZ\x90\x00", "application/octet-stream").run()
    errors = [e.value for e in at.sidebar.error]
    assert "Refused big.md: 1.0 MB is over the upload limit of 1 MB (ui.upload_max_mb)" in errors
    assert "Refused tool.exe: unsupported file type '.exe'; upload .md, .markdown, .txt, .pdf files" in errors
    uploads = Path(config.ui.uploads_dir)
    assert not (uploads / "big.md").exists() and not (uploads / "tool.exe").exists()
    assert not at.sidebar.info  # no ingestion started


def test_upload_refused_while_another_writer_holds_the_lock_and_questions_still_answered(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    with WriterLock(config.index.dir):  # e.g. `python -m pipeline.index` running in another shell
        at.file_uploader(key="uploads").upload("later.md", b"# Later\n\ntext", "text/markdown").run()
        errors = [e.value for e in at.sidebar.error]
        assert any(e.startswith("Refused: cannot add documents now: index ") and "is being written by pid" in e for e in errors), errors
        ask(at, "What is a linked list?", "nn_answer")  # readers never take the lock
        turn = at.session_state["turns"][-1]
        assert turn["error"] is None and turn["answer"] and len(turn["sources"]) == 1
    assert not (Path(config.ui.uploads_dir) / "later.md").exists()


# ------------------------------------------------------------------ missing artifacts


def test_missing_artifact_shows_the_command_that_builds_it(monkeypatch, tiny_config, ui_system, profile_writer, tmp_path):
    _, config = ui_system
    missing = tmp_path / "no-such-adapter"
    profile, _ = profile_writer(tiny_config, Path(config.run_dir), "missing.yaml", rewrite=dataclasses.replace(tiny_config.rewrite, adapter=str(missing)))
    at = open_app(monkeypatch, profile)
    sidebar_errors = [e.value for e in at.sidebar.error]
    assert any(str(missing) in e and "python -m finetune.rewriter" in e for e in sidebar_errors), sidebar_errors
    ask(at, "What is a B-tree?", "full")
    (error,) = at.chat_message[-1].error
    assert "the rewriter adapter is not built" in error.value and "python -m finetune.rewriter --config tiny" in error.value
    assert not at.exception


# ------------------------------------------------------------------ start-up: flags, bad config, no raw HTML


def test_help_flag_and_bad_config_are_shown_in_the_page(monkeypatch):
    monkeypatch.setattr("sys.argv", ["ui/app.py", "--help"])  # as `streamlit run ui/app.py -- --help` sets it
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception and "--config PROFILE" in at.code[0].value and "RAGFT_CONFIG" in at.code[0].value
    monkeypatch.setattr("sys.argv", ["ui/app.py"])
    monkeypatch.setenv("RAGFT_CONFIG", "tiny")
    monkeypatch.setenv("RAGFT_SET", "retrieve.top_k=0")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    with pytest.raises(ConfigError) as expected:
        load_config("tiny", ["retrieve.top_k=0"])
    assert [e.value for e in at.error] == [f"Configuration error: {expected.value}"]


def test_no_ui_module_renders_raw_html():
    """Retrieved text must never reach the page as HTML: no `unsafe_allow_html=...` argument and
    no raw-HTML element (st.html, components.html) anywhere in ui/."""
    import ast

    for path in sorted(APP.parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                assert not any(k.arg == "unsafe_allow_html" for k in node.keywords), f"{path.name}:{node.lineno} passes unsafe_allow_html"
                func = node.func
                assert not (isinstance(func, ast.Attribute) and func.attr == "html"), f"{path.name}:{node.lineno} renders raw HTML"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.startswith("streamlit.components") for m in modules), f"{path.name}:{node.lineno} imports streamlit components"


def test_agent_retries_then_declines_and_the_trace_shows_each_round(monkeypatch, tiny_config, ui_system, profile_writer):
    _, config = ui_system
    strict = dataclasses.replace(tiny_config.agent, grade_threshold=1.0, max_rounds=2, retry_modes=["multi"], on_weak="not_found")  # no passage can pass
    profile, _ = profile_writer(tiny_config, Path(config.run_dir), "strict.yaml", agent=strict)
    at = open_app(monkeypatch, profile)
    ask(at, "What is a B-tree?", "full")
    reply = at.chat_message[-1]
    turn = at.session_state["turns"][-1]
    assert turn["not_found"] and turn["sources"] == [] and turn["error"] is None
    assert reply.markdown[0].value == render.answer_markdown(turn["answer"]) and "could not find" in turn["answer"]
    assert [i.value for i in reply.info] == ["No passage of the knowledge base was good enough, so the system declined to answer from it."]
    rounds = [plain(m.value) for m in reply.markdown if m.value.startswith("- Round")]
    assert len(rounds) == 2
    assert rounds[0].startswith("- Round 1 · rewrite ") and "→ retry with multi" in rounds[0]
    assert rounds[1].startswith("- Round 2 · rewrite multi") and rounds[1].endswith("after the last round → not found")
    closest = turn["metadata"]["not_used"]
    assert [e.label for e in reply.expander] == [f"Closest passages, not used ({len(closest)})", "Sources (0)", "Trace: rewrite, rounds, timings"]  # candidates still viewable
    assert len(closest) == config.rerank.top_n and "Searched for:" in turn["answer"]
    assert [t.value for t in reply.expander[0].text] == [row["text"] for row in closest]


# ------------------------------------------------------------------ conversations


def test_a_follow_up_is_condensed_the_trace_says_what_was_searched_and_new_conversation_forgets(monkeypatch, ui_system):
    profile, _ = ui_system
    at = open_app(monkeypatch, profile)
    ask(at, "What is a B-tree?", "nn_answer")
    first = at.session_state["turns"][-1]
    assert first["metadata"]["condensed"] is False
    trace = [plain(c.value) for c in at.chat_message[1].caption if plain(c.value).startswith("searched as: ")]
    assert trace == ["searched as: What is a B-tree? (the message as typed; first turn: one clean question)"]

    ask(at, "and how is it kept balanced?", "nn_answer")  # the tiny LM condenses (badly, but it does)
    turn = at.session_state["turns"][-1]
    assert turn["error"] is None and turn["question"] == "and how is it kept balanced?"
    meta = turn["metadata"]
    assert meta["condensed"] is True and meta["standalone_question"] and meta["condense"]["reason"] == "continues the conversation: opens with 'and'"
    captions = [plain(c.value) for c in at.chat_message[3].caption if plain(c.value).startswith("searched as: ")]
    assert len(captions) == 2 and captions[0] == captions[1]  # under the answer and in the trace
    assert captions[0].startswith(f"searched as: {meta['standalone_question']} (")
    memory = at.session_state["chat_memory"]
    assert [m.content for m in memory.get_all() if m.role.value == "user"] == ["What is a B-tree?", "and how is it kept balanced?"]

    at.button(key="new-conversation").click().run()
    assert not at.exception and at.session_state["turns"] == [] and memory.get_all() == []
    assert not at.chat_message  # the page forgot too
    ask(at, "and how is it kept balanced?", "nn_answer")
    assert at.session_state["turns"][-1]["metadata"]["condensed"] is False  # nothing left to refer back to


def test_each_browser_session_has_its_own_conversation(monkeypatch, ui_system):
    profile, _ = ui_system
    alice = open_app(monkeypatch, profile)
    ask(alice, "What is a B-tree?", "nn_answer")
    bob = open_app(monkeypatch, profile)  # another browser: same process, same cached models
    assert "turns" not in bob.session_state or bob.session_state["turns"] == []
    ask(bob, "and how is it kept balanced?", "nn_answer")
    assert bob.session_state["turns"][-1]["metadata"]["condensed"] is False  # Alice's B-tree is not Bob's context
    assert bob.session_state["chat_memory"] is not alice.session_state["chat_memory"]
    assert len(alice.session_state["chat_memory"].get_all()) == 2 and len(bob.session_state["chat_memory"].get_all()) == 2


def test_a_failed_turn_keeps_the_conversation(monkeypatch, ui_system):
    profile, _ = ui_system
    at = open_app(monkeypatch, profile)
    ask(at, "What is a B-tree?", "nn_answer")
    memory = at.session_state["chat_memory"]
    before = memory.get_all()
    ask(at, ("How does a hash table handle collisions? " * 3000)[:100_000], "rag_vanilla")  # over the context window
    assert at.session_state["turns"][-1]["error"] and at.chat_message[-1].error
    assert memory.get_all() == before
