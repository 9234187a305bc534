"""The document benchmark's pieces that need no model: the hand-written questions against this
Python's pydoc topics, the export, and when a passage holds an answer."""

from __future__ import annotations

import pytest

from eval.documents.benchmark import export_pydoc, holds_answer, load_questions, to_markdown_headings
from pipeline.data import DataError


def test_at_least_sixty_hand_written_questions_each_with_verbatim_evidence_in_its_topic():
    dev, test = load_questions("dev"), load_questions("test")  # raises when an evidence sentence is not in its topic
    assert len(dev) + len(test) >= 60 and len(dev) >= 30 and len(test) >= 30
    assert not {r["question"] for r in dev} & {r["question"] for r in test}
    assert len({r["topic"] for r in dev + test}) >= 40  # spread over the reference, not a few topics
    with pytest.raises(DataError, match="dev .*or test"):
        load_questions("val")


def test_export_writes_one_markdown_file_per_topic_with_headings_and_is_idempotent(tmp_path):
    paths = export_pydoc(tmp_path)
    assert len(paths) >= 70 and (tmp_path / "with.md").is_file()
    text = (tmp_path / "try.md").read_text(encoding="utf-8")
    assert text.startswith('# The "try" statement\n') and '\n## "except" clause\n' in text
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [p.stat().st_mtime_ns for p in export_pydoc(tmp_path)] == stamps  # unchanged files are not rewritten


def test_a_passage_holds_the_answer_with_most_of_the_evidence_from_any_topic_file():
    row = {"topic": "break", "evidence": "the loop control target keeps its current value"}
    passage = "If a for loop is terminated by break, the loop control target keeps its current value. When break passes"
    assert holds_answer(passage, "/x/pydoc-3.11/break.md", row)
    assert holds_answer(passage, "/x/pydoc-3.11/compound.md", row)  # pydoc repeats sections across topics
    assert not holds_answer(passage, "/x/pydoc-3.11/continue.md", row, own_file=True)  # file@3: the topic's own file only
    assert holds_answer("... the loop control target keeps its", "break.md", row) is False  # 7 of 9 words: under 0.8
    assert not holds_answer("break ends the nearest enclosing loop", "break.md", row)


def test_to_markdown_headings_turns_underlined_titles_into_headings():
    assert to_markdown_headings("Title\n*****\n\nText\n\nSub\n===\nmore") == "# Title\n\nText\n\n## Sub\nmore\n"
