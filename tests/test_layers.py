"""The layer order of pyproject.toml's import-linter contract covers every module (lint-imports, run by
`make test`, checks the imports; this checks that no module escapes it)."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers" and "ragft" in c["layers"]]  # the package-wide order
    return [module.strip() for layer in contract["layers"] for module in layer.replace("|", ":").split(":")]


def test_every_pipeline_module_sits_in_a_layer():
    named = set(_layers())
    modules = {f"pipeline.{info.name}" for info in pkgutil.iter_modules(pipeline.__path__)}
    assert modules - named == set(), "add these modules to the core layer in pyproject.toml (or the engine's, if they orchestrate rerank/rewrite)"
    assert named - modules - {"ragft", "ui", "eval", "finetune", "rerank", "rewrite"} == set(), "the contract names modules that no longer exist"


def test_every_top_level_package_is_layered():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages == set(config["tool"]["importlinter"]["root_packages"])
    assert packages - {"pipeline"} <= set(_layers())
