"""The document benchmark: the hand-written questions against this
Python's pydoc topics, the export, when a passage holds an answer, and a run on the tiny system."""

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


def test_the_benchmark_scores_retrieval_and_answers_and_counts_a_declined_question_apart(tiny_config, tmp_path, monkeypatch):
    """evaluate_documents on the tiny system, three pydoc topics beside its knowledge base: the
    hit rates per system, the answers' support over the questions answered, declines counted."""
    import dataclasses

    from pydoc_data.topics import topics

    import eval.documents.benchmark as bench
    from pipeline.grade import GradeCalibration

    def three_topics(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("break", "with", "assert"):
            (folder / f"{key}.md").write_text(to_markdown_headings(topics[key]), encoding="utf-8")
        return sorted(folder.glob("*.md"))

    rows = [r for r in load_questions("dev") if r["topic"] in ("break", "with")][:2]
    monkeypatch.setattr(bench, "export_pydoc", three_topics)
    monkeypatch.setattr(bench, "load_questions", lambda split: rows)
    result, predictions = bench.evaluate_documents(tiny_config, "dev", ["full", "rag_vanilla"], answers=True, show_progress=False, log=lambda *_: None)
    assert result["questions"] == len(predictions) == 2 and "3 topics" in result["document"]
    for system, summary in result["systems"].items():
        hits = [p["retrieved"][system]["hit@3"] for p in predictions]
        assert summary["hit@3"] == pytest.approx(sum(hits) / 2) and summary["hit@1"] <= summary["hit@3"] <= summary["hit@5"]
        assert summary["file@3"] <= summary["hit@3"] and "rougeL" in summary
    assert result["systems"]["full"]["declined"] == 0 and "supported" in result["systems"]["full"]

    # a grade that finds every round weak: full declines both, cites nothing, and has no support rate
    path = tmp_path / "grade.json"
    GradeCalibration(intercept=-20.0, coef={"ql": 0.0, "dense": 0.0}, threshold=0.5).save(path)
    declining = dataclasses.replace(tiny_config, agent=dataclasses.replace(tiny_config.agent, calibration=str(path), on_weak="not_found", max_rounds=1, grade_threshold=0.0))
    result, _ = bench.evaluate_documents(declining, "dev", ["full"], answers=True, show_progress=False, log=lambda *_: None)
    full = result["systems"]["full"]
    assert full["declined"] == 2 and full["hit@3"] == 0.0 and "supported" not in full
    assert "| declined |" in bench.to_markdown(result) and bench.to_markdown(result).splitlines()[4].endswith("| 2 |")
