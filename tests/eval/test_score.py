"""eval.score: the seed experiment's figures from its prediction files, errors, output files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval import score as S

SEED_FIGURES = {  # system: (BLEU-4, ROUGE-L), from the seed data's README
    "vanilla_test": (0.0274, 0.1620),
    "rag_vanilla_test": (0.0515, 0.2266),
    "finetuned_test": (0.0561, 0.1797),
    "rag_finetuned_test": (0.0451, 0.1532),
}


@pytest.fixture(scope="module")
def seed_json(seed_dir):
    """`python -m eval.score <seed results> --format json --no-bertscore`, run in process."""
    files = sorted(str(p) for p in (seed_dir / "results").glob("*.jsonl"))
    return files


def test_seed_files_reproduce_bleu_and_rouge(seed_json, capsys):
    assert S.main([*seed_json, "--format", "json", "--no-bertscore", "--no-progress", "--samples", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_for_bertscore"] is None
    assert set(result["systems"]) == set(SEED_FIGURES)
    for name, (bleu, rouge) in SEED_FIGURES.items():
        system = result["systems"][name]
        assert round(system["bleu4"], 4) == bleu
        assert system["rougeL"] == pytest.approx(rouge, abs=5e-4)
        assert system["exact_match"] == 0.0  # the README: EM is 0.0 for all four
        assert system["n"] == 272
        for metric in ("bleu4", "rougeL", "exact_match", "exact_match_squad", "token_f1"):
            low, high = system["ci95"][metric]
            assert low <= system[metric] <= high
    # paired tests against rag_vanilla (found from its stem rag_vanilla_test)
    assert result["baseline"] == "rag_vanilla_test"
    assert "vs_baseline" not in result["systems"]["rag_vanilla_test"]
    vanilla = result["systems"]["vanilla_test"]["vs_baseline"]
    assert vanilla["n_paired"] == 272
    assert vanilla["bleu4"]["diff"] == pytest.approx(0.0274 - 0.0515, abs=2e-4)
    assert vanilla["rougeL"]["p_value"] < 0.01 and vanilla["rougeL"]["ci95_high"] < 0


def test_markdown_output_and_out_dir(tmp_path, capsys):
    files = []
    for name, rows in {
        "rag_vanilla": [("q1", "a binary tree node", "a binary tree"), ("q2", "use a hash map", "use a hash map"), ("q3", "", "stack")],
        "full": [("q3", "a stack", "stack"), ("q1", "binary tree", "a binary tree"), ("q2", "hash map", "use a hash map")],
    }.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"question": q, "prediction": p, "reference": r, "extra": 1}) + "\n" for q, p, r in rows))
        files.append(str(path))
    out = tmp_path / "scores"
    assert S.main([*files, "--no-bertscore", "--no-progress", "--samples", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("BERTScore: not computed.")
    assert "| rag_vanilla | " in text and "| full | " in text
    assert "Paired bootstrap vs `rag_vanilla`" in text
    saved = json.loads((out / "scores.json").read_text())
    # rows are paired by question, not by line: full's lines are in another order
    assert saved["systems"]["full"]["vs_baseline"]["n_paired"] == 3
    assert saved["systems"]["full"]["exact_match"] == pytest.approx(0.0)
    assert saved["systems"]["rag_vanilla"]["exact_match"] == pytest.approx(1 / 3)
    assert (out / "scores.md").read_text() == text
    assert (out / "ragft_config.yaml").is_file()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "q", "prediction": "p", "reference": "r"}\nnot json\n', "line 2: not valid JSON"),
        ('{"question": "q", "reference": "r"}\n', "line 1: missing field(s) 'prediction'"),
        ('{"question": "q", "prediction": null, "reference": "r"}\n', "line 1: field 'prediction' is NoneType"),
        ('["q", "p", "r"]\n', "line 1: expected a JSON object"),
        ("\n\n", "no predictions"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert S.main([str(path), "--no-bertscore"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}" in err and message in err


def test_missing_file_duplicate_stems_and_unknown_baseline(tmp_path, capsys):
    assert S.main([str(tmp_path / "nope.jsonl"), "--no-bertscore"]) == 2
    assert "no such file" in capsys.readouterr().err
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sys.jsonl").write_text('{"question": "q", "prediction": "p", "reference": "r"}\n')
    assert S.main([str(tmp_path / "a" / "sys.jsonl"), str(tmp_path / "b" / "sys.jsonl"), "--no-bertscore"]) == 2
    assert "share the name(s) sys" in capsys.readouterr().err
    assert S.main([str(tmp_path / "a" / "sys.jsonl"), "--no-bertscore", "--baseline", "other"]) == 2
    assert "--baseline 'other' matches none of the files (sys)" in capsys.readouterr().err


def test_named_bertscore_model_must_load(tmp_path, capsys):
    path = tmp_path / "sys.jsonl"
    path.write_text('{"question": "q", "prediction": "p", "reference": "r"}\n')
    assert S.main([str(path), "--bertscore-model", "no-such-owner/no-such-model"]) == 2
    assert "no-such-owner/no-such-model" in capsys.readouterr().err


def test_find_baseline():
    assert S.find_baseline(["vanilla_test", "rag_vanilla_test"], "rag_vanilla") == "rag_vanilla_test"
    assert S.find_baseline(["rag_vanilla", "rag_vanilla_test"], "rag_vanilla") == "rag_vanilla"
    assert S.find_baseline(["rag_vanilla_extra"], "rag_vanilla") is None


def test_help_runs_as_a_module(repo_root):
    done = subprocess.run([sys.executable, "-m", "eval.score", "--help"], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flag in ("--format", "--bertscore-model", "--no-bertscore", "--baseline", "--samples", "--seed", "--out", "--config"):
        assert flag in done.stdout
