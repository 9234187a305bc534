"""Bad input in the chat app (ui/app.py), driven by Streamlit's AppTest on the tiny system.

Questions typed into the chat (empty, whitespace-only, 100k characters, CJK, emoji) give an answer
or a clear message in the page, never an exception; uploads that ingestion could not read (binary
content under a text extension, non-UTF-8 text, empty or blank files, a .pdf that is none) are
refused at once with a message naming the file, and nothing is saved or ingested. The oversized and
unsupported-type uploads are in tests/ui/test_app.py. Fixtures: ui_system (tests/ui/conftest.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app_driver import ask, open_app
from ui import render

LONG_QUESTION = ("How does a hash table handle collisions when many keys share a bucket? " * 1500)[:100_000]


@pytest.fixture(scope="module")
def app(ui_system):
    """One page for the question matrix (the models load once); each test adds turns to it."""
    profile, _ = ui_system
    monkeypatch = pytest.MonkeyPatch()
    at = open_app(monkeypatch, profile)
    yield at
    monkeypatch.undo()


# ------------------------------------------------------------------ questions


@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_empty_or_blank_question_adds_no_turn_and_says_why(app, question):
    turns_before = len(app.session_state["turns"]) if "turns" in app.session_state else 0
    ask(app, question, "nn_answer")
    assert len(app.session_state["turns"]) == turns_before  # nothing was asked
    assert [w.value for w in app.warning] == ["The question is empty; type a question with some text in it."]


def test_100k_character_question_is_answered_by_nn_answer(app):
    ask(app, LONG_QUESTION, "nn_answer")
    turn = app.session_state["turns"][-1]
    assert turn["error"] is None and turn["question"] == LONG_QUESTION.strip()
    assert len(turn["sources"]) == 1 and "collision" in turn["answer"].lower()
    reply = app.chat_message[-1]
    assert reply.markdown[0].value == render.answer_markdown(turn["answer"])


@pytest.mark.parametrize("system", ["full", "rag_vanilla", "vanilla"])
def test_100k_character_question_gets_a_clear_message_naming_the_context_window(app, system):
    ask(app, LONG_QUESTION, system)
    turn = app.session_state["turns"][-1]
    assert turn["system"] == system and turn["answer"] == "" and turn["sources"] == []
    (error,) = app.chat_message[-1].error
    assert error.value == turn["error"]
    assert "2048-token context window" in error.value and "shorten the question" in error.value
    assert "Traceback" not in error.value and "PromptTooLongError" not in error.value  # a known error: shown as is


@pytest.mark.parametrize("question", ["哈希表如何处理冲突？", "🙂🚀🔥", "Qu'est-ce qu'un B-arbre? 🌳 Как работает хеш-таблица?"])
@pytest.mark.parametrize("system", ["nn_answer", "full"])
def test_non_english_and_emoji_questions_are_answered_with_sources(app, system, question):
    ask(app, question, system)
    turn = app.session_state["turns"][-1]
    assert turn["error"] is None and turn["system"] == system and turn["question"] == question
    reply = app.chat_message[-1]
    assert reply.markdown[0].value == (render.answer_markdown(turn["answer"]) if turn["answer"].strip() else "_(the model returned an empty answer)_")
    if turn["not_found"]:  # the agent may decline; the page says so
        assert turn["sources"] == [] and reply.info
        return
    assert 1 <= len(turn["sources"]) and [e.label for e in reply.expander][0] == f"Sources ({len(turn['sources'])})"
    assert [t.value for t in reply.text][: len(turn["sources"])] == [s["text"] for s in turn["sources"]]
    assert app.chat_message[-2].markdown[0].value == render.escape_markdown(question)  # the question shows as typed


# ------------------------------------------------------------------ uploads

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))
REFUSED = {
    # name: (bytes, the sidebar message)
    "scan.txt": (PNG, "Refused scan.txt: binary content (NUL bytes), not .txt text; upload a UTF-8 text file"),
    "picture.md": (PNG, "Refused picture.md: binary content (NUL bytes), not .md text; upload a UTF-8 text file"),
    "latin1.md": (b"# Caf\xe9\n\nWritten in Latin-1.", "Refused latin1.md: not UTF-8 text (byte 0xe9 at offset 5); re-save it as UTF-8 and upload it again"),
    "empty.md": (b"", "Refused empty.md: the file is empty"),
    "blank.txt": (b" \n\t\n  ", "Refused blank.txt: the file holds only whitespace, no text"),
    "fake.pdf": (b"just text, named .pdf", "Refused fake.pdf: not a PDF (no %PDF- header); upload the document itself, or save text as .txt"),
}


def test_unreadable_uploads_are_refused_with_a_message_and_nothing_is_saved_or_ingested(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    uploader = at.file_uploader(key="uploads")
    for name, (data, _) in REFUSED.items():
        uploader = uploader.upload(name, data, "application/octet-stream")
    uploader.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    for name, (_, message) in REFUSED.items():
        assert message in errors, (name, errors)
    uploads = Path(config.ui.uploads_dir)
    assert not any((uploads / name).exists() for name in REFUSED)
    assert not at.sidebar.info and not at.sidebar.success  # no ingestion started


def test_a_readable_upload_beside_refused_ones_is_still_ingested(monkeypatch, ui_system):
    profile, config = ui_system
    at = open_app(monkeypatch, profile)
    good = "# Grue pipes\n\nA grue pipe carries ünïcödé text and emoji 🙂 in UTF-8.\n".encode()
    at.file_uploader(key="uploads").upload("scan.txt", PNG, "text/plain").upload("grue.md", good, "text/markdown").run()
    assert "Refused scan.txt: binary content (NUL bytes), not .txt text; upload a UTF-8 text file" in [e.value for e in at.sidebar.error]
    deadline = time.monotonic() + 120
    while not at.sidebar.success:  # rerun as the status fragment does each second in a browser
        assert time.monotonic() < deadline, [e.value for e in at.sidebar.error]
        time.sleep(0.5)
        at.run()
    assert at.sidebar.success[-1].value.startswith("added grue.md: passages: 1 added, "), at.sidebar.success[-1].value
    assert (Path(config.ui.uploads_dir) / "grue.md").read_bytes() == good
    assert not (Path(config.ui.uploads_dir) / "scan.txt").exists()
