"""Shared fixtures. Tests run offline: models are bundled (MiniLM) or built here (tiny LMs)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# Offline before anything imports huggingface_hub or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fixture models live under pytest's temporary folders, outside every test config's run_dir: trust
# that root machine-wide, as an operator would trust a shared model folder (security.model_dirs).
# tests/pipeline/test_safe_loading.py removes it to prove that other paths are refused.
os.environ.setdefault("RAGFT_MODEL_DIRS", tempfile.gettempdir())


REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = REPO_ROOT.parent / "shared" / "data" / "seed-technical-qa"
DEMO_DIR = REPO_ROOT / "data" / "demo"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    """The reference experiment's data, read in place from ../shared (never copied)."""
    if not (SEED_DIR / "dataset.jsonl").is_file():
        pytest.skip(f"reference data not found at {SEED_DIR}; check out ../shared beside the repo")
    return SEED_DIR


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO_DIR


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A micro Llama causal LM + byte-level BPE tokenizer built by finetune.tiny with
    `finetune.tiny.MICRO_OVERRIDES` (512-token vocabulary, 2 layers x 32 hidden, ~60 k parameters,
    30 pretraining steps on 150 k characters of Python docs). Built once per session in about
    5-15 s on 2 CPU cores; no chat template (prompts use the plain format). Read-only for tests:
    copy it before changing anything."""
    from finetune.tiny import MICRO_OVERRIDES, build_tiny_lm
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("tiny-lm")
    config = load_config("tiny", [*MICRO_OVERRIDES, f"run_dir={root}"])
    out = root / "model"
    build_tiny_lm(config, output=out, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def hash_embedding_cls():
    """A fast, deterministic LlamaIndex embedding for tests where the model is irrelevant:
    hashed bag of lower-cased words (64 dims, L2-normalized), so texts sharing words are close.
    Instances count what they embed (`.calls`: number of texts) to prove what was (re-)embedded.
    Usage: `embed = hash_embedding_cls()`; pass it as `embed_model=` to ingest/open_index."""
    import hashlib
    import re

    import numpy as np
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class HashEmbedding(BaseEmbedding):
        dim: int = 64
        calls: int = 0

        def _vector(self, text: str) -> list[float]:
            vec = np.zeros(self.dim)
            for word in re.findall(r"\w+", text.lower()):
                vec[int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % self.dim] += 1.0
            norm = np.linalg.norm(vec)
            return (vec / norm if norm else vec + 1.0 / np.sqrt(self.dim)).tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            self.calls += 1
            return self._vector(text)

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._vector(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._vector(query)

    return HashEmbedding


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Iterator[Path]:
    """A cross-encoder folder with random weights: BertForSequenceClassification (2 layers, hidden
    32, one logit) and the bundled all-MiniLM-L6-v2 WordPiece tokenizer. Built once per session in
    about a second; loads with `sentence_transformers.CrossEncoder(path)` like any reranker.
    Read-only for tests: copy it before changing anything."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pipeline.config import MINILM
    from pipeline.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    model = BertForSequenceClassification(config)
    out = tmp_path_factory.mktemp("tiny-cross-encoder") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    built = {p.name for p in out.iterdir()}
    yield out
    # an int8 export (rerank.backend: onnx-int8) caches itself beside the model: a test that wrote
    # here would make later tests see a cache they did not build
    written = sorted({p.name for p in out.iterdir()} - built)
    assert not written, f"a test wrote {written} into the shared tiny cross-encoder {out}; copy it into tmp_path first (shutil.copytree)"


def make_adapter(base_dir, out_dir):
    """A LoRA adapter with random (non-zero) weights on `base_dir`, saved like a trained one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False))
    peft_model.save_pretrained(out_dir, safe_serialization=True)


@pytest.fixture(scope="session")
def adapter_maker():
    """`make_adapter(base_dir, out_dir)` for tests (conftest is not importable under importlib mode)."""
    return make_adapter


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_lm_dir, tiny_cross_encoder_dir, demo_dir):
    """A complete tiny system for engine, UI and evaluation tests, built once per session (~30 s):
    the micro LM with freshly initialised LoRA adapters (plain, raft, rewriter), the random-weight
    cross-encoder, and the real MiniLM index of the demo knowledge base. Read-only for tests:
    `dataclasses.replace` it (or load_config with its run_dir) to change settings."""
    from pipeline.config import load_config
    from pipeline.index import ingest

    root = tmp_path_factory.mktemp("system")
    config = load_config(
        "tiny",
        [
            f"run_dir={root}",
            f"data.dir={demo_dir}",
            f"generator.model={tiny_lm_dir}",
            f"rerank.model={tiny_cross_encoder_dir}",
            "generator.max_new_tokens=8",
            "rewrite.max_new_tokens=8",
            "agent.grade_threshold=0.0",
            "rewrite.mode=hyde",  # the tiny profile ships `none`; the tests exercise the rewriter
        ],
    )
    ingest(config, show_progress=False, log=lambda *_: None)
    for path in (config.finetune.generator.output, config.finetune.raft.output, config.rewrite.adapter):
        make_adapter(tiny_lm_dir, path)
    return config
