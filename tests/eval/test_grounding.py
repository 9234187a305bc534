"""eval.grounding on the tiny system: the same passages for every copy bias, support scored as
pipeline.support scores it, the quote policy computed from the same answers."""

from __future__ import annotations

import json

import pytest

from eval.grounding import evaluate_grounding, main, to_markdown
from pipeline.support import lexical_support, tokens


def test_grounding_scores_each_copy_bias_on_the_same_passages(tiny_config, tmp_path, capsys, monkeypatch):
    result, rows = evaluate_grounding(tiny_config, "val", [0.0, 20.0], quote_below=[0.5, 0.0], limit=3, show_progress=False, log=lambda *_: None)
    assert result["questions"] == 3 and list(result["settings"]) == ["0.0", "20.0"]
    assert "rougeL_minus_first" not in result["settings"]["0.0"] and "rougeL_minus_first" in result["settings"]["20.0"]
    for bias, summary in result["settings"].items():
        answers = [row["answers"][bias] for row in rows]
        assert summary["support"] == pytest.approx(sum(a["support"] for a in answers) / 3, abs=1e-4)
        assert summary["quote"]["supported"] >= summary["supported"]  # a quoted passage supports itself
        assert summary["quote"] == summary["quote_below"]["0.5"] and summary["quote_below"]["0"]["quoted"] == 0  # nothing is under 0
        assert summary["quote_below"]["0.5"]["quoted"] == sum(a["support"] < 0.5 and bool(tokens(a["answer"])) for a in answers)  # an empty answer has no best passage
        assert summary["model_supported"] == pytest.approx(sum(a["model_support"] > 0 for a in answers) / 3, abs=1e-9)
    assert all(len(row["passages"]) == tiny_config.rerank.top_n for row in rows)
    assert "| 20.0 |" in to_markdown(result) and "| 20.0 | 0 | 0 |" in to_markdown(result)
    monkeypatch.setattr("eval.grounding.config_for_data", lambda args: tiny_config)
    out = tmp_path / "g.json"
    assert main(["--split", "val", "--limit", "2", "--copy-bias", "0", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["questions"] == 2 and out.with_suffix(".questions.jsonl").is_file()
    assert main(["--copy-bias", "0,abc"]) == 2 and "comma-separated numbers" in capsys.readouterr().err
    assert main(["--copy-bias", "50"]) == 2 and "between 0 and 20" in capsys.readouterr().err
    assert main(["--quote-below", "0.3,2"]) == 2 and "between 0 and 1" in capsys.readouterr().err


def test_support_of_a_copied_answer_is_one():
    assert lexical_support("TCP is reliable", ["Some text. TCP is reliable, UDP is not."])[0] == 1.0


def test_the_support_of_a_predictions_file_counts_declined_quoted_and_flagged_answers(tiny_config, tmp_path, capsys, monkeypatch):
    from eval.grounding import predictions_support

    source = [{"rank": 1, "id": "a", "text": "Question: What does ARP do?\nAnswer: ARP maps an IP address to a MAC address."}]
    rows = [
        {"question": "q1", "prediction": "ARP maps an IP address to a MAC address [1].", "reference": "ARP maps IP to MAC.", "sources": source, "trace": {"support": {"action": "none"}}},
        {"question": "q2", "prediction": 'From the knowledge base [1]: "ARP maps an IP address to a MAC address."', "reference": "ARP maps IP to MAC.", "sources": source, "trace": {"support": {"action": "quoted"}}},
        {"question": "q3", "prediction": "A deadlock is a sequence of unfortunate events.", "reference": "ARP maps IP to MAC.", "sources": source, "trace": {"support": {"action": "flagged"}}},
        {"question": "q4", "prediction": "I could not find this in the knowledge base.", "reference": "Cook it.", "sources": [], "trace": {"not_found": True}},
    ]
    path = tmp_path / "full.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = predictions_support(tiny_config, str(path))
    assert (result["questions"], result["declined"], result["answered"], result["quoted"], result["flagged"]) == (4, 1, 3, 1, 1)
    assert result["supported"] == pytest.approx(2 / 3)  # the declined question is no answer: not in the share
    assert result["rougeL"] < result["rougeL_answered"]  # the refusal scores 0 against its reference
    monkeypatch.setattr("eval.grounding.config_for_data", lambda args: tiny_config)
    assert main(["--predictions", str(path)]) == 0 and "| 1 | 3 | 1 | 1 | 0.6667" in capsys.readouterr().out
