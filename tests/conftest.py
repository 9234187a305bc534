"""Shared fixtures. Tests run offline: models are bundled (MiniLM) or built here (tiny LMs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline before anything imports huggingface_hub or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pipeline  # noqa: E402,F401  (hides bitsandbytes on machines without CUDA)

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
