"""eval.bench trust: the grade and the support check timed on a run's own data (small fixed files)."""

from __future__ import annotations

import json

from eval.bench_trust import main


def test_trust_bench_times_every_question_and_every_answer(tmp_path, capsys):
    run = {
        "calibration": {"intercept": 0.0, "coef": {"ql": 1.0, "dense": 1.0}, "threshold": 0.5},
        "per_question": [
            {"features": {"ql": -1.0, "dense": 0.5}, "top": [{"rerank_score": 0.3}, {"rerank_score": 0.1}]},
            {"features": None, "top": []},
        ],
    }
    answers = [{"prediction": "TCP is reliable.", "sources": [{"text": "TCP is a reliable protocol."}]}, {"prediction": "x", "sources": []}]
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "full.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    out = tmp_path / "cost.json"
    assert main(["--features", str(tmp_path / "run.json"), "--answers", str(tmp_path / "full.jsonl"), "--repeat", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["questions"] == {"grade": 1, "support": 2} and result["grade"]["n"] == 3 and result["support"]["n"] == 6
    assert 0 < result["grade"]["p50_us"] < 1e6 and "per answer" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--features", str(tmp_path / "bad.json"), "--answers", str(tmp_path / "full.jsonl")]) == 2
    assert "not an eval.answerability run" in capsys.readouterr().err
