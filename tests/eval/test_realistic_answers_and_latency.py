"""eval.realistic.answers (full as chat turns against systems answering the message as typed) and
eval.bench condense (the condense step's cost per message), on the tiny system and the demo data.
The tiny LM's answers are noise; what is checked is which text each system answered, the scores'
bookkeeping and what the latency benchmark counts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from llama_index.core.base.llms.types import ChatMessage

from eval import bench_condense
from eval.realistic.answers import main as answers_main, to_markdown
from rewrite.cases import build_cases
from rewrite.condense import needs_condensing


@pytest.fixture(scope="module")
def condensing(tiny_config, tiny_lm_dir, adapter_maker, tmp_path_factory):
    """The tiny system with `full` condensing through a (random-weight) condenser adapter."""
    adapter = tmp_path_factory.mktemp("condenser") / "adapter"
    adapter_maker(tiny_lm_dir, adapter)
    rewrite = dataclasses.replace(tiny_config.rewrite, mode="condense", condense_adapter=str(adapter))
    return dataclasses.replace(tiny_config, rewrite=rewrite)


def test_full_answers_the_condensed_question_and_the_others_the_message_as_typed(condensing, tmp_path, capsys, monkeypatch):
    import eval.realistic.answers as answers

    monkeypatch.setattr(answers, "config_for_data", lambda args: condensing)
    out = tmp_path / "answers.json"
    assert answers_main(["--systems", "full-no-rewrite,rag_vanilla", "--cases", "none", "--limit", "2", "--split", "val", "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    cases = {c.id: c for c in build_cases(condensing.data.dir, "val", seed=condensing.eval.seed) if c.family != "clean"}
    assert result["systems"] == ["full", "full-no-rewrite", "rag_vanilla"] and result["cases"] == len(rows) == 6
    assert result["run"]["command"].startswith("python -m eval.realistic.answers")
    assert {r["family"] for r in rows} == {"follow-up", "verbose", "compound"}
    for row in rows:
        assert row["full-no-rewrite"]["search_question"] == row["message"] == cases[row["id"]].message
        assert row["full"]["sources"] and row["rag_vanilla"]["sources"] and row["reference"]
    for family in ("all", "follow-up", "verbose", "compound"):
        block = result["families"][family]
        assert block["n"] == (6 if family == "all" else 2) and set(block["systems"]) == {"full", "full-no-rewrite", "rag_vanilla"}
        for system in ("full-no-rewrite", "rag_vanilla"):
            delta = block["full_minus"][system]["rougeL"]
            assert delta["ci95_low"] <= delta["diff"] <= delta["ci95_high"]
            assert delta["diff"] == pytest.approx(block["systems"]["full"]["rougeL"] - block["systems"][system]["rougeL"], abs=1e-9)
    assert "| all | 6 | full |" in to_markdown(result)
    capsys.readouterr()
    assert answers_main(["--systems", "ful-no-rewrite", "--split", "val"]) == 2
    assert "unknown ['ful-no-rewrite']" in capsys.readouterr().err


def test_a_full_variant_is_answered_as_full_under_its_one_setting_and_paired_with_full(condensing, tmp_path, capsys, monkeypatch):
    """--full-variant agent.max_rounds=2: the re-query round, measured against full's one round."""
    import eval.realistic.answers as answers
    from pipeline.grade import GradeCalibration

    path = tmp_path / "grade.json"
    GradeCalibration(intercept=-20.0, coef={"ql": 0.0, "dense": 0.0}, threshold=0.5).save(path)  # every round weak
    weak = dataclasses.replace(condensing, agent=dataclasses.replace(condensing.agent, calibration=str(path), on_weak="not_found", max_rounds=1, grade_threshold=0.0))
    two_rounds = dataclasses.replace(weak, agent=dataclasses.replace(weak.agent, max_rounds=2))
    monkeypatch.setattr(answers, "config_for_data", lambda args, flags=(): two_rounds if list(flags) == ["agent.max_rounds=2"] else weak)
    out = tmp_path / "variant.json"
    assert answers_main(["--systems", "rag_vanilla", "--full-variant", "agent.max_rounds=2", "--cases", "none", "--limit", "1", "--split", "val", "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["systems"] == ["full", "full[agent.max_rounds=2]", "rag_vanilla"]
    assert result["declined"] == {"full": 3, "full[agent.max_rounds=2]": 3, "rag_vanilla": 0}
    assert result["retried"] == {"full": 0, "full[agent.max_rounds=2]": 3}
    assert set(result["families"]["all"]["full_minus"]) == {"full[agent.max_rounds=2]", "rag_vanilla"}
    assert "retried (more than one round): full 0, full[agent.max_rounds=2] 3" in to_markdown(result)
    capsys.readouterr()
    assert answers_main(["--full-variant", "max_rounds"]) == 2 and "SECTION.KEY=VALUE" in capsys.readouterr().err


def test_latency_counts_the_lm_calls_the_gate_allows_and_a_clean_first_turn_costs_none(condensing, tmp_path, capsys, monkeypatch):
    result = bench_condense.measure(condensing, "val", adapter=True, hand_dir=None, limit=4, warmup=1)
    cases = build_cases(condensing.data.dir, "val", seed=condensing.eval.seed)
    assert result["adapter"] == condensing.rewrite.condense_adapter and result["warmup"] == 1
    for family, row in result["families"].items():
        members = [c for c in cases if c.family == family][:4]
        sent = sum(needs_condensing(c.message, [ChatMessage(role=t["role"], content=t["content"]) for t in c.history])[0] for c in members)
        assert row["messages"] == len(members) and row["lm_calls"] == sent
        assert row["all"]["n"] == len(members) and row["rewritten"]["n"] == sent
    clean = result["families"]["clean"]
    assert clean["lm_calls"] < clean["messages"] and clean["gated_out_us_p50"] is not None and clean["gated_out_us_p50"] < 50_000
    assert "A standalone first turn (clean, gated out)" in bench_condense.to_markdown(result)
    monkeypatch.setattr("pipeline.cli.config_for_data", lambda args: condensing)
    out = tmp_path / "latency.json"
    assert bench_condense.main(["--split", "val", "--cases", "none", "--limit", "2", "--warmup", "0", "--out", str(out), "--format", "json"]) == 0
    written = json.loads(out.read_text())
    assert written["families"]["verbose"]["messages"] == 2 and written["run"]["command"].startswith("python -m eval.bench condense")


def test_latency_side_by_side_with_prompt_lookup_keeps_the_rewrites(condensing, capsys, monkeypatch):
    result = bench_condense.measure(condensing, "val", adapter=True, hand_dir=None, limit=3, warmup=0, lookups=[None, 4])
    off, on = result["settings"]
    assert off["prompt_lookup_tokens"] is None and on["prompt_lookup_tokens"] == 4
    for family, row in on["families"].items():
        assert row["messages"] == off["families"][family]["messages"] and row["lm_calls"] == off["families"][family]["lm_calls"]
        assert row["same_rewrites_as_first"] == row["messages"]  # greedy: the same rewrites, fewer forward passes
    table = bench_condense.to_markdown(result)
    assert "#### prompt-lookup decoding: off" in table and "#### prompt-lookup decoding: 4" in table and "Rewrites equal to the first setting's" in table
    monkeypatch.setattr("pipeline.cli.config_for_data", lambda args: condensing)
    assert bench_condense.main(["--split", "val", "--cases", "none", "--limit", "1", "--prompt-lookup", "none,x"]) == 2
    assert "neither none nor a token count" in capsys.readouterr().err
