"""pipeline.cli: the --data/--split/--format/--out arguments every command shares, and the config
--data DIR resolves to (no models: only parsers and configs)."""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli import FORMATS, add_io_arguments, config_for_data, data_run_dir, same_path
from pipeline.config import add_config_arguments, load_config
from pipeline.data import SPLITS


def _parser(**io) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_io_arguments(parser, **io)
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"]


@pytest.mark.parametrize(
    "io, flags",
    [
        ({}, []),
        ({"out": "o"}, ["--out"]),
        ({"formats": "f"}, ["--format"]),
        ({"data": "d", "split": "s"}, ["--data", "--split"]),
        # always in this order, whatever order the keywords come in
        ({"out": "o", "formats": "f", "split": "s", "data": "d"}, ["--data", "--split", "--format", "--out"]),
    ],
)
def test_only_the_arguments_given_a_help_text_are_added(io, flags):
    assert _flags(_parser(**io)) == flags


def test_defaults():
    args = _parser(data="d", split="s", formats="f", out="o").parse_args([])
    assert (args.data, args.split, args.format, args.out) == (None, None, "md", None)
    args = _parser(data="d", data_default="seed", split="s", split_default="val").parse_args([])
    assert (args.data, args.split) == ("seed", "val")
    args = _parser(data="d", split="s", formats="f", out="o").parse_args(["--data", "D", "--split", "train", "--format", "json", "--out", "F"])
    assert (args.data, args.split, args.format, args.out) == ("D", "train", "json", "F")


def test_choices(capsys):
    parser = _parser(split="s", formats="f")
    split, formats = (a for a in parser._actions if a.dest in ("split", "format"))
    assert (list(split.choices), tuple(formats.choices)) == (list(SPLITS), FORMATS)
    narrow = _parser(split="s", split_choices=("val", "test"))
    assert narrow.parse_args(["--split", "test"]).split == "test"
    with pytest.raises(SystemExit):
        narrow.parse_args(["--split", "train"])
    assert "invalid choice: 'train'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--format", "csv"])


def test_help_texts_metavars_and_a_required_out(capsys):
    text = _parser(data="Folder of splits.", out="Output folder.", out_metavar="DIR").format_help()
    assert "--data DIR" in text and "Folder of splits." in text and "--out DIR" in text and "Output folder." in text
    assert "--out FILE" in _parser(out="o").format_help()
    required = _parser(out="o", out_required=True)
    assert required.parse_args(["--out", "x"]).out == "x"
    with pytest.raises(SystemExit):
        required.parse_args([])
    assert "the following arguments are required: --out" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# config_for_data
# --------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    add_io_arguments(parser, data="d")
    return parser.parse_args(["--config", "tiny", *argv])


def test_without_data_or_with_the_profiles_own_it_is_the_profile(demo_dir):
    profile = load_config("tiny")
    assert config_for_data(_args()).to_dict() == profile.to_dict()
    assert config_for_data(_args("--data", str(demo_dir))).to_dict() == profile.to_dict()  # same folder, spelled otherwise
    assert config_for_data(_args(), ["retrieve.top_k=3"]).retrieve.top_k == 3  # a command's own flags


def test_other_data_gets_its_own_run_folder_and_shares_the_base_lm(tmp_path):
    profile = load_config("tiny")
    config = config_for_data(_args("--data", str(tmp_path)))
    run_dir = data_run_dir(profile.run_dir, tmp_path)
    assert (config.data.dir, config.data.input, config.run_dir) == (str(tmp_path), "", run_dir)
    assert config.index.dir.startswith(run_dir) and config.rerank.model.startswith(run_dir)  # data-dependent artifacts move
    assert (config.generator.model, config.finetune.tiny.output) == (profile.generator.model, profile.finetune.tiny.output)
    assert config.security.model_dirs[0] == run_dir and profile.run_dir in config.security.model_dirs
    assert data_run_dir(profile.run_dir, tmp_path) != data_run_dir(profile.run_dir, tmp_path / "other")


def test_other_data_keeps_a_run_dir_or_data_input_set_on_the_command_line(tmp_path):
    raw = tmp_path / "raw.jsonl"
    config = config_for_data(_args("--data", str(tmp_path / "d"), "--set", f"run_dir={tmp_path / 'run'}", "--set", f"data.input={raw}"))
    assert (config.run_dir, config.data.input, config.data.dir) == (str(tmp_path / "run"), str(raw), str(tmp_path / "d"))


def test_same_path_resolves_both_sides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert same_path("a/../b", tmp_path / "b") and not same_path("a", "b")
