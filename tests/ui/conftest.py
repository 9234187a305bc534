"""Fixtures of the chat-app tests: a profile file for the session's tiny system with a private
copy of its index (uploads never touch the index other tests read) and a 1 MB upload limit."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from pipeline.config import UIConfig
from pipeline.index import LOCK_INFO_NAME, LOCK_NAME


def write_profile(tiny_config, root: Path, name: str = "profile.yaml", **changes):
    """(profile path, config): tiny_config with run_dir, index copy, uploads and feedback under root."""
    index = root / "index"
    if not index.exists():
        shutil.copytree(tiny_config.index.dir, index, ignore=shutil.ignore_patterns(LOCK_NAME, LOCK_INFO_NAME))
    config = dataclasses.replace(
        tiny_config,
        run_dir=str(root),
        index=dataclasses.replace(tiny_config.index, dir=str(index)),
        ui=UIConfig(upload_max_mb=1, uploads_dir=str(root / "uploads"), feedback_file=str(root / "feedback.jsonl")),
        **changes,
    )
    path = root / name
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path, config


@pytest.fixture(scope="module")
def ui_system(tiny_config, tmp_path_factory):
    return write_profile(tiny_config, tmp_path_factory.mktemp("ui-system"))


@pytest.fixture(scope="session")
def profile_writer():
    return write_profile


@pytest.fixture(scope="module", autouse=True)
def _free_app_resources():
    """AppTest runs the app in this process: drop its cached models after each test module, so
    the rest of the session does not carry them."""
    yield
    import streamlit as st

    st.cache_resource.clear()
