"""What docs/configuration.md states about the defaults is what the code and the default profile hold."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from pipeline.config import Config, load_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _table(heading: str) -> list[list[str]]:
    section = DOC.read_text(encoding="utf-8").split(heading, 1)[1]
    rows = []
    for line in section.split("\n## ", 1)[0].splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def _lookup(config: Config, dotted: str):
    node = config
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def _stated(cell: str):
    """The value a cell states: its first `code` span, or a bare number; None when it states none."""
    span = re.match(r"`([^`]*)`", cell)
    if span:
        return span.group(1) if "{" in span.group(1) else yaml.safe_load(span.group(1))
    if re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", cell):
        return yaml.safe_load(cell)
    return None


def test_every_config_section_is_described():
    described = {row[0].strip("`") for row in _table("## Sections")}
    assert {field.name for field in dataclasses.fields(Config) if dataclasses.is_dataclass(field.type) or field.name not in ("profile", "run_dir")} - {"profile", "run_dir"} <= described


def test_the_default_profile_table_matches_the_code_and_the_profile():
    code, shipped = Config(), load_config()
    checked = 0
    for key, code_cell, profile_cell, *_ in _table("## The default profile"):
        dotted = key.strip("`")
        if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", dotted):
            continue  # a row about several keys ("agent.max_rounds / retry_modes") states them in words
        for config, cell in ((code, code_cell), (shipped, profile_cell)):
            stated = _stated(cell)
            if stated is None:
                continue
            actual = _lookup(config, dotted)
            if isinstance(stated, str) and "{run_dir}" in stated and "{run_dir}" not in str(actual):
                stated = stated.replace("{run_dir}", config.run_dir)  # a profile expands it on load
            assert stated == (list(actual) if isinstance(actual, tuple) else actual), f"docs/configuration.md says {dotted} = {cell!r}, the code has {actual!r}"
            checked += 1
    assert checked >= 20
