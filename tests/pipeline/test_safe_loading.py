"""Safe loading and supply chain: safetensors only unless opted in, no remote code unless the config
says so, and model or adapter paths only from the folders the `security` section trusts.

Each refusal is proved on a real planted payload: a pickle that would write a marker file when
unpickled, and a model folder whose custom code would write one when imported. The marker never
appears unless the user opted in."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.models import (
    MODEL_DIRS_ENV,
    ModelLoadError,
    ModelSourceRefusedError,
    check_model_source,
    load_causal_lm,
    load_llm,
    require_safetensors,
)


@pytest.fixture()
def strict(monkeypatch):
    """The policy a user gets: no machine-wide trusted folders (the suite trusts the temp root)."""
    monkeypatch.delenv(MODEL_DIRS_ENV, raising=False)


def _config(run_dir: Path, *extra: str):
    return load_config("tiny", [f"run_dir={run_dir}", *extra])


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a malicious pytorch_model.bin can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(_Payload(marker), handle)


# ---- paths --------------------------------------------------------------------------------


def test_paths_inside_run_dir_and_hub_ids_pass(strict, tmp_path):
    config = _config(tmp_path / "run")
    inside = tmp_path / "run" / "models" / "lm"
    inside.mkdir(parents=True)
    assert check_model_source(config, str(inside), "generator.model") == str(inside)
    assert check_model_source(config, "sentence-transformers/all-MiniLM-L6-v2", "index.embed_model") == "sentence-transformers/all-MiniLM-L6-v2"
    assert check_model_source(config, None, "generator.adapter") is None


def test_path_outside_the_model_folders_is_refused_naming_key_path_and_fixes(strict, tmp_path):
    config = _config(tmp_path / "run")
    elsewhere = tmp_path / "downloads" / "model"
    elsewhere.mkdir(parents=True)
    with pytest.raises(ModelSourceRefusedError) as info:
        check_model_source(config, str(elsewhere), "rerank.model")
    message = str(info.value)
    assert f"rerank.model='{elsewhere}'" in message
    assert str((tmp_path / "run").resolve()) in message  # the trusted folders are listed
    assert "security.model_dirs" in message and MODEL_DIRS_ENV in message and "security.allow_any_model_path=true" in message


@pytest.mark.parametrize(
    "how",
    ["model_dirs", "allow_any", "environment"],
)
def test_explicit_allowances_let_the_path_through(strict, tmp_path, monkeypatch, how):
    elsewhere = tmp_path / "shared-models" / "model"
    elsewhere.mkdir(parents=True)
    extra = {
        "model_dirs": [f"security.model_dirs=[{tmp_path / 'run'}, {tmp_path / 'shared-models'}]"],
        "allow_any": ["security.allow_any_model_path=true"],
        "environment": [],
    }[how]
    if how == "environment":
        monkeypatch.setenv(MODEL_DIRS_ENV, os.pathsep.join(["/nonexistent", str(tmp_path / "shared-models")]))
    config = _config(tmp_path / "run", *extra)
    assert check_model_source(config, str(elsewhere), "generator.model") == str(elsewhere)


def test_a_symlink_in_the_run_dir_pointing_outside_is_refused(strict, tmp_path):
    outside = tmp_path / "outside" / "model"
    outside.mkdir(parents=True)
    (tmp_path / "run" / "models").mkdir(parents=True)
    link = tmp_path / "run" / "models" / "lm"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelSourceRefusedError, match="resolves to"):
        check_model_source(_config(tmp_path / "run"), str(link), "generator.model")
    # a sibling that merely shares the folder name's prefix is not inside it either
    prefix_twin = tmp_path / "run-evil" / "model"
    prefix_twin.mkdir(parents=True)
    with pytest.raises(ModelSourceRefusedError):
        check_model_source(_config(tmp_path / "run"), str(prefix_twin), "generator.model")


def test_every_config_driven_loader_refuses_before_reading_anything(strict, tmp_path, tiny_lm_dir, tiny_cross_encoder_dir):
    from eval.metrics import BertScoreModel
    from pipeline.encoders import load_embedder
    from rerank import CrossEncoderReranker

    run = tmp_path / "run"
    with pytest.raises(ModelSourceRefusedError, match="generator.model"):
        load_llm(_config(run, f"generator.model={tiny_lm_dir}"))
    with pytest.raises(ModelSourceRefusedError, match="adapter"):
        load_llm(_config(run), adapter=str(tmp_path / "adapter"))
    with pytest.raises(ModelSourceRefusedError, match="rerank.model"):
        CrossEncoderReranker.from_config(_config(run, f"rerank.model={tiny_cross_encoder_dir}"))
    with pytest.raises(ModelSourceRefusedError, match="index.embed_model"):
        load_embedder(_config(run, f"index.embed_model={tiny_cross_encoder_dir}"))
    with pytest.raises(ModelSourceRefusedError, match="eval.bertscore_model"):
        BertScoreModel.from_config(_config(run, f"eval.bertscore_model={tiny_cross_encoder_dir}"))


def test_cli_reports_the_refusal_as_a_user_error(strict, tmp_path, tiny_lm_dir, capsys):
    from finetune.generator import main

    code = main(["--mode", "plain", "--config", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", f"generator.model={tiny_lm_dir}", "--set", "data.dir=data/demo"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: generator.model=" in err and "outside the folders models may be loaded from" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "adapters" / "generator" / "adapter_config.json").exists()


# ---- formats ------------------------------------------------------------------------------


def _pickle_model(tiny_lm_dir: Path, out: Path, marker: Path) -> Path:
    """A copy of the tiny LM whose only weights file is a malicious pickle."""
    shutil.copytree(tiny_lm_dir, out)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    _plant_pickle(out / "pytorch_model.bin", marker)
    return out


def test_pickle_weights_are_never_unpickled_without_the_opt_in(tmp_path, tiny_lm_dir):
    marker = tmp_path / "pwned"
    model = _pickle_model(tiny_lm_dir, tmp_path / "run" / "models" / "lm", marker)
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(model))
    assert "security.allow_pickle_weights=true" in str(info.value) and "safe_serialization=True" in str(info.value)
    assert not marker.exists()


def test_with_the_opt_in_pickle_weights_load_and_answer_like_safetensors(tmp_path, tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "run" / "models" / "lm-bin"
    shutil.copytree(tiny_lm_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    # transformers 5 only writes safetensors; a pickle checkpoint is what older tools (and attackers) ship
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError):
        load_causal_lm(str(folder), device="cpu")
    from_pickle, _ = load_causal_lm(str(folder), device="cpu", allow_pickle=True)
    from_safetensors, _ = load_causal_lm(str(tiny_lm_dir), device="cpu")
    for (name, a), (_, b) in zip(from_pickle.state_dict().items(), from_safetensors.state_dict().items()):
        assert torch.equal(a, b), name


def test_pickle_adapters_are_refused_and_load_with_the_opt_in(tmp_path, tiny_lm_dir, adapter_maker):
    config = _config(tmp_path / "run", f"generator.model={tiny_lm_dir}", "generator.device=cpu", "generator.max_new_tokens=4")
    adapter = tmp_path / "run" / "adapters" / "plain"
    adapter_maker(tiny_lm_dir, adapter)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelSourceRefusedError, match="adapter_model.safetensors"):
        load_llm(config, adapter=str(adapter)).load()
    allowed = _config(tmp_path / "run", f"generator.model={tiny_lm_dir}", "generator.device=cpu", "generator.max_new_tokens=4", "security.allow_pickle_weights=true")
    llm = load_llm(allowed, adapter=str(adapter)).load()
    assert type(llm.model).__name__ == "PeftModelForCausalLM"


def test_loaders_that_call_from_pretrained_themselves_check_the_folder_first(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    _plant_pickle(folder / "pytorch_model.bin", tmp_path / "pwned")
    with pytest.raises(ModelSourceRefusedError, match="no .safetensors"):
        require_safetensors(str(folder), "BERTScore model 'x'")
    require_safetensors(str(folder), "BERTScore model 'x'", allow_pickle=True)  # opted in: no refusal
    (folder / "model.safetensors").write_bytes(b"")
    require_safetensors(str(folder), "BERTScore model 'x'")
    assert not (tmp_path / "pwned").exists()


# ---- remote code --------------------------------------------------------------------------

CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import LlamaConfig

class TrojanConfig(LlamaConfig):
    model_type = "trojan"
"""


def test_remote_code_never_runs_unless_the_config_says_so(tmp_path, tiny_lm_dir):
    import json

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "models" / "trojan"
    shutil.copytree(tiny_lm_dir, folder)
    (folder / "configuration_trojan.py").write_text(CUSTOM_CODE.format(marker=str(marker)), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config.update({"model_type": "trojan", "auto_map": {"AutoConfig": "configuration_trojan.TrojanConfig"}})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(folder), device="cpu")
    assert "generator.trust_remote_code=true" in str(info.value)
    assert not marker.exists()
