"""The tiny offline base LM (finetune/tiny.py): generic corpus, determinism, saved artifacts."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from finetune.tiny import MICRO_OVERRIDES, build_parser, build_tiny_lm, generic_corpus
from pipeline.config import load_config, read_resolved_config
from pipeline.data import load_split


def test_corpus_is_generic_python_documentation_never_the_domain_data(demo_dir, seed_dir):
    corpus = generic_corpus(400_000)
    assert sum(map(len, corpus)) == 400_000
    text = "\n".join(corpus)
    from pydoc_data.topics import topics

    assert topics[sorted(topics)[0]].strip()[:200] in text  # starts with the CPython doc topics
    domain = load_split(demo_dir, "train") + load_split(seed_dir / "splits", "train")
    # no domain answer (or a long piece of one) is in the pretraining text
    assert not [r for r in domain if r["answer"][:60] in text]
    assert generic_corpus(1000) == generic_corpus(1000)  # fixed order


def test_same_seed_same_weights_other_seed_other_weights(tiny_lm_dir, tmp_path):
    config = load_config("tiny", [*MICRO_OVERRIDES, f"run_dir={tmp_path}"])
    again = build_tiny_lm(config, output=tmp_path / "again", log=lambda *_: None)
    first, second = load_file(str(tiny_lm_dir / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    assert (tiny_lm_dir / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()
    assert again["loss_history"][-1]["loss"] < again["loss_history"][0]["loss"]  # it learned something
    other = load_config("tiny", [*MICRO_OVERRIDES, f"run_dir={tmp_path}", "finetune.seed=1"])
    build_tiny_lm(other, output=tmp_path / "other", log=lambda *_: None)
    third = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert any(not (first[k] == third[k]).all() for k in first)


def test_saved_model_loads_offline_with_its_config(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in tiny_lm_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "pretrain.json", "ragft_config.yaml"} <= names
    assert not any(n.endswith(".bin") for n in names)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, use_safetensors=True)
    assert model.config.model_type == "llama" and model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    text = "Any UTF-8 text encodes: naïve café ∑ 🙂"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: no <unk>
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>" and not tokenizer.chat_template
    config, facts = read_resolved_config(tiny_lm_dir)
    assert facts["kind"] == "tiny-lm" and config.finetune.tiny.hidden_size == 32
    report = json.loads((tiny_lm_dir / "pretrain.json").read_text())
    assert report["steps"] == 30 and len(report["loss_history"]) == 30


def test_cli_help_names_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "python -m finetune.tiny --config pipeline/configs/tiny.yaml" in out
    for flag in ("--out", "--seed", "--config", "--set", "--help-config"):
        assert flag in out
