"""Generator LoRA fine-tuning (finetune/generator.py) on the session's micro tiny LM."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from finetune.generator import main, train_generator
from helpers import micro_lm_config
from pipeline.config import load_config, read_resolved_config
from pipeline.generate import answer_prompt
from pipeline.models import load_llm
from pipeline.retrieve import build_retriever

PROMPTS = [answer_prompt("Compare TCP and UDP."), answer_prompt("What is a binary heap?", ["Question: What is a heap?\nAnswer: A tree."])]


def _config(tiny_lm_dir, small_data_dir, run_dir, *extra):
    return micro_lm_config(
        tiny_lm_dir,
        small_data_dir,
        run_dir,
        "generator.device=cpu",
        "generator.max_new_tokens=10",
        "finetune.generator.epochs=1",
        "finetune.generator.batch_size=8",
        "finetune.generator.learning_rate=0.01",
        "finetune.generator.max_seq_length=320",
        "finetune.generator.limit=16",
        "finetune.raft.num_passages=2",
        *extra,
    )


def _logits(llm):
    encoded = llm._encode(PROMPTS)
    with torch.inference_mode():
        return llm.model(**encoded).logits[:, -1].float()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def plain_run(tiny_lm_dir, small_data_dir, tmp_path_factory):
    """One plain training run; records what the in-memory model looked like after training."""
    run_dir = tmp_path_factory.mktemp("gen-run")
    config = _config(tiny_lm_dir, small_data_dir, run_dir)
    base_file = tiny_lm_dir / "model.safetensors"
    base_before = load_file(str(base_file))
    sha_before = _sha(base_file)
    seen = {}

    def inspect(trainer):
        model = trainer.model
        model.eval()
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["first_row"] = trainer.train_dataset[0]
        from pipeline.models import local_llm_class

        llm = local_llm_class()(model_ref=str(tiny_lm_dir), max_new_tokens=10, verbose=False)
        llm._tokenizer = trainer.processing_class
        llm._tokenizer.padding_side = "left"
        llm._model = model
        seen["greedy"] = llm.generate_batch(PROMPTS, show_progress=False)
        seen["logits"] = _logits(llm)
        llm._tokenizer.padding_side = "right"

    report = train_generator(config, "plain", log=lambda *_: None, show_progress=False, after_training=inspect)
    return {"config": config, "report": report, "seen": seen, "base_before": base_before, "sha_before": sha_before, "base_file": base_file}


def test_training_changes_lora_and_leaves_base_weights_untouched(plain_run):
    state, base = plain_run["seen"]["state"], plain_run["base_before"]
    lora_b = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # lora_B starts at zero
    checked = 0
    for name, value in state.items():
        if "lora_" in name:
            continue
        plain_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if plain_name in base:
            assert torch.equal(value, base[plain_name]), plain_name
            checked += 1
    assert checked == len(base)  # every base tensor found and unchanged in memory ...
    assert _sha(plain_run["base_file"]) == plain_run["sha_before"]  # ... and on disk


def test_saved_adapter_reloads_and_generates_the_same_greedy_output(plain_run):
    config, out = plain_run["config"], plain_run["config"].finetune.generator.output
    reloaded = load_llm(config, adapter=out, verbose=False)
    assert reloaded.generate_batch(PROMPTS, show_progress=False) == plain_run["seen"]["greedy"]
    assert torch.allclose(_logits(reloaded), plain_run["seen"]["logits"], atol=1e-5)
    merged = load_config("tiny", [f"{k}={json.dumps(v)}" for k, v in (("run_dir", config.run_dir), ("generator.model", config.generator.model), ("generator.max_new_tokens", 10), ("generator.device", "cpu"), ("generator.merge_adapter", True))])
    assert load_llm(merged, adapter=out, verbose=False).generate_batch(PROMPTS, show_progress=False) == plain_run["seen"]["greedy"]
    base = load_llm(config, adapter=None, verbose=False)
    assert not torch.allclose(_logits(base), plain_run["seen"]["logits"], atol=1e-3)  # the adapter matters


def test_loss_is_on_the_completion_only(plain_run):
    row = plain_run["seen"]["first_row"]
    labels, ids = row["labels"], row["input_ids"]
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert set(labels[:first]) == {-100} and labels[first:] == ids[first:]
    from transformers import AutoTokenizer

    from pipeline.data import load_split

    first_pair = load_split(plain_run["config"].data.dir, "train")[0]
    tokenizer = AutoTokenizer.from_pretrained(plain_run["config"].generator.model)
    assert tokenizer.decode(ids[:first]) == answer_prompt(first_pair["question"])  # the prompt: no loss
    assert tokenizer.decode(ids[first:]) == " " + first_pair["answer"] + tokenizer.eos_token  # the answer: loss


def test_artifacts_are_saved_together(plain_run):
    from pathlib import Path

    out = Path(plain_run["config"].finetune.generator.output)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "loss_history.json", "loss_curve.png", "train_report.json", "ragft_config.yaml", "tokenizer.json"} <= names
    history = json.loads((out / "loss_history.json").read_text())
    assert history["train"] and len(history["val"]) == 1  # one epoch, one validation
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    config, facts = read_resolved_config(out)
    assert facts["kind"] == "generator-adapter-plain" and config.finetune.generator.limit == 16
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp or checkpoint folders left
    assert not any(p.suffix == ".bin" for p in out.iterdir())


def test_raft_mode_trains_on_retrieved_contexts(tiny_lm_dir, small_data_dir, tmp_path, make_kb):
    from pipeline.data import load_split

    config = _config(tiny_lm_dir, small_data_dir, tmp_path, "finetune.generator.limit=8", "finetune.raft.context=oracle", "finetune.raft.oracle_prob=0.5", "finetune.generator.max_seq_length=700")
    retriever = build_retriever(config, mode="bm25", top_k=7, kb=make_kb(config, load_split(small_data_dir, "train")))
    report = train_generator(config, "raft", retriever=retriever, log=lambda *_: None, show_progress=False)
    out = tmp_path / "adapters" / "generator-raft"
    rows = [json.loads(line) for line in (out / "raft_train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["passages"]) == 2 for r in rows)
    assert report["raft_oracle_fraction"] == sum(r["oracle"] is not None for r in rows) / 8
    assert (out / "raft_val.jsonl").is_file() and (out / "adapter_model.safetensors").is_file()
    test_questions = {r["question"] for r in load_split(small_data_dir, "test")}
    assert not test_questions & {r["question"] for r in rows}


def test_leave_one_out_mode_trains_on_reranked_contexts_without_the_own_pair(tiny_lm_dir, tiny_cross_encoder_dir, small_data_dir, tmp_path, make_kb):
    from pipeline.data import load_split
    from pipeline.index import qa_text

    config = _config(tiny_lm_dir, small_data_dir, tmp_path, "finetune.generator.limit=6", "finetune.generator.eval_limit=3", "finetune.raft.context=loo", f"rerank.model={tiny_cross_encoder_dir}", "rerank.top_n=2", "finetune.generator.max_seq_length=700")
    train = load_split(small_data_dir, "train")
    retriever = build_retriever(config, mode="bm25", top_k=7, kb=make_kb(config, train))
    report = train_generator(config, "raft", retriever=retriever, log=lambda *_: None, show_progress=False)
    out = tmp_path / "adapters" / "generator-raft"
    rows = [json.loads(line) for line in (out / "raft_train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["passages"]) == 2 for r in rows)  # rerank.top_n: what full gives its generator
    for record, row in zip(train, rows):
        assert qa_text(record["question"], record["answer"]) not in row["passages"]
        assert row["oracle"] is None and row["target"] == record["answer"].strip()
    assert report["val_examples"] == 3 and report["raft_oracle_fraction"] == 0.0


def test_prompts_longer_than_the_budget_fail_with_the_setting(tiny_lm_dir, small_data_dir, tmp_path, make_kb):
    from pipeline.config import ConfigError
    from pipeline.data import load_split

    config = _config(tiny_lm_dir, small_data_dir, tmp_path, "finetune.generator.limit=4", "finetune.raft.context=oracle", "finetune.generator.max_seq_length=64")
    retriever = build_retriever(config, mode="bm25", top_k=7, kb=make_kb(config, load_split(small_data_dir, "train")))
    with pytest.raises(ConfigError, match="finetune.generator.max_seq_length=64"):
        train_generator(config, "raft", retriever=retriever, log=lambda *_: None, show_progress=False)


def test_cli_reports_a_missing_index_for_raft(tiny_lm_dir, small_data_dir, tmp_path, capsys):
    code = main(["--mode", "raft", "--config", "tiny", "--set", f"run_dir={tmp_path}", "--set", f"data.dir={small_data_dir}", "--set", f"generator.model={tiny_lm_dir}"])
    assert code == 2
    assert "python -m pipeline.index" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (QLoRA: 4-bit NF4 base through bitsandbytes)")
def test_qlora_trains_on_cuda(tiny_lm_dir, small_data_dir, tmp_path):
    config = _config(tiny_lm_dir, small_data_dir, tmp_path, "generator.load_in_4bit=true", "generator.device=cuda")
    report = train_generator(config, "plain", log=lambda *_: None, show_progress=False)
    assert report["steps"] > 0


def test_cpu_autocast_trains_the_forward_in_bf16_with_float32_weights(tiny_lm_dir, small_data_dir, tmp_path, monkeypatch):
    """generator.train_cpu_autocast: the training forward runs under CPU autocast (bfloat16
    matmuls) while the base weights and the LoRA matrices stay float32, and the adapter trains."""
    import pipeline.models as models

    config = _config(tiny_lm_dir, small_data_dir, tmp_path / "run", "generator.train_cpu_autocast=true", "finetune.generator.limit=8")
    seen = {"autocast": [], "dtypes": set()}
    real_load = models.load_causal_lm  # finetune.common imports it at call time

    def load_and_watch(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)

        def watch(module, inputs):
            if module.training:
                seen["autocast"].append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

        model.model.layers[-1].mlp.register_forward_pre_hook(watch)
        return model, tokenizer

    monkeypatch.setattr(models, "load_causal_lm", load_and_watch)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)  # the same on any test machine
    report = train_generator(config, "plain", log=lambda *_: None, show_progress=False, after_training=lambda trainer: seen.update(dtypes={p.dtype for p in trainer.model.parameters()}))
    assert seen["autocast"] and all(seen["autocast"]), seen["autocast"]
    assert seen["dtypes"] == {torch.float32}
    assert report["steps"] >= 1 and report["train_loss"] > 0

    # on a CPU without bf16 instructions autocast would only add conversions: float32, with a warning
    seen["autocast"].clear()
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    logged = []
    train_generator(config, "plain", log=logged.append, show_progress=False, resume=False)
    assert seen["autocast"] and not any(seen["autocast"]), seen["autocast"]
    assert any("train_cpu_autocast is on, but this CPU has no bfloat16 instructions" in line and "training in float32" in line for line in logged)


def test_cpu_bf16_probe_reads_the_cpus_capabilities(monkeypatch):
    import pipeline.models as models

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert models.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False, "avx2": True})
    assert not models.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert models.cpu_has_native_bf16()
