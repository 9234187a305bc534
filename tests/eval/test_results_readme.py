"""eval.results_readme: each run rendered by the command that made it, with its command and revision."""

from __future__ import annotations

import json

from eval.results_readme import main


def test_a_readme_from_runs_of_different_commands(tmp_path, capsys):
    run = {"command": "python -m eval.answerability --split dev", "git_revision": "abc123", "seconds": 12.5}
    refusals = {"predictions": "full.jsonl", "questions": 10, "refused": 2, "refused_rate": 0.2, "rougeL_answered": 0.25, "rougeL_with_refusals": 0.2, "rougeL_change": {"diff": -0.05, "ci95_low": -0.09, "ci95_high": -0.01}, "run": run}
    grounding = {"split": "val", "questions": 3, "seconds": {"retrieve": 1.0}, "run": {**run, "command": "python -m eval.grounding"}, "settings": {
        "0.0": {"rougeL": 0.2, "bertscore_f1": 0.5, "support": 0.3, "supported": 0.33, "ci95": {m: [0.1, 0.3] for m in ("rougeL", "bertscore_f1", "support", "supported")}, "quote": {"rougeL": 0.2, "supported": 1.0, "ci95": {"rougeL": [0.1, 0.3], "supported": [1.0, 1.0]}}}}}
    (tmp_path / "a.json").write_text(json.dumps(refusals))
    (tmp_path / "g.json").write_text(json.dumps(grounding))
    out = tmp_path / "README.md"
    assert main([str(tmp_path / "a.json"), str(tmp_path / "g.json"), "--title", "trust", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("# trust\n") and f"## `{tmp_path.name}/a.json`" in page and f"## `{tmp_path.name}/g.json`" in page
    assert "python -m eval.answerability --split dev" in page and "git revision: `abc123`; wall time 12.5 s" in page
    assert "2 of 10 (0.200)" in page and "-0.0500 [-0.0900, -0.0100]" in page
    assert "| 0.0 | 0.2000 [0.1000, 0.3000]" in page
    page_file = tmp_path / "FRONT.md"
    page_file.write_text("top\n<!-- results:trust-headline:start -->\nold\n<!-- results:trust-headline:end -->\nbottom\n")
    assert main([str(tmp_path / "g.json"), "--title", "trust", "--out", str(out), "--readme-block", str(page_file)]) == 0
    front = page_file.read_text()
    assert "old" not in front and front.startswith("top\n") and front.endswith("bottom\n")
    assert f"| seed val: `full`'s answers supported, copy_bias 0.0 (ROUGE-L 0.2000) | 0.330 [0.100, 0.300] | `{tmp_path.name}/g.json` |" in front
    given = {"predictions": "results/seed/predictions/full.jsonl", "questions": 4, "declined": 1, "answered": 3, "quoted": 1, "flagged": 0, "supported": 0.667, "support": 0.7, "rougeL_answered": 0.3,
             "ci95": {"supported": [0.3, 1.0], "support": [0.5, 0.9], "rougeL_answered": [0.2, 0.4]}, "rougeL": 0.25, "run": {**run, "command": "python -m eval.grounding --predictions x"}}
    (tmp_path / "given.json").write_text(json.dumps(given))
    assert main([str(tmp_path / "given.json"), "--title", "trust", "--out", str(out), "--readme-block", str(page_file)]) == 0
    assert "| 1 | 3 | 1 | 0 | 0.6670 [0.3000, 1.0000]" in out.read_text()
    assert "| seed: `full`'s answers supported as given (3 answered, 1 of them quoted, 1 declined; ROUGE-L 0.2500) | 0.667 [0.300, 1.000] |" in page_file.read_text()
    page_file.write_text("no markers\n")
    assert main([str(tmp_path / "g.json"), "--title", "trust", "--out", str(out), "--readme-block", str(page_file)]) == 2
    assert "has no block" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    assert main([str(tmp_path / "bad.json"), "--title", "x", "--out", str(out)]) == 2
    assert "not a run of" in capsys.readouterr().err
