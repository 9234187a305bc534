"""Bad input through every `python -m finetune.*` command, called in process (`main(argv)`).

The matrix: malformed, truncated, wrong-typed, non-UTF-8, binary and empty data files; an empty
data folder; config overrides and profile files with an unknown key, a wrong type or a negative
top_k; a missing model path. Each case must exit 2 (run_cli's user-error code, or argparse's for a
bad flag) with one `error:` line naming the bad input and the fix, and leave NO artifact: nothing
is written under the run folder, and an artifact a previous run completed stays byte-identical.
Nothing here trains: every case fails before the first optimizer step (the micro LM of
tests/conftest.py loads in well under a second).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune import embedder, generator, raft, reranker, rewriter, tiny
from pipeline.data import load_split
from pipeline.fileio import write_jsonl

# module name -> (main, fixed flags, dotted key of its artifact folder or file)
COMMANDS = {
    "tiny": (tiny.main, [], "finetune.tiny.output"),
    "generator-plain": (generator.main, ["--mode", "plain"], "finetune.generator.output"),
    "generator-raft": (generator.main, ["--mode", "raft"], "finetune.raft.output"),
    "raft": (raft.main, [], "finetune.raft.output"),
    "rewriter": (rewriter.main, ["--no-evaluate"], "finetune.rewriter.output"),
    "reranker": (reranker.main, ["--no-progress"], "finetune.reranker.output"),
    "embedder": (embedder.main, ["--no-progress"], "finetune.embedder.output"),
}
DATA_COMMANDS = [name for name in COMMANDS if name != "tiny"]  # finetune.tiny reads no data


@pytest.fixture(scope="module")
def good_data(demo_dir, tmp_path_factory):
    """Small valid splits (16 / 4 / 4 demo pairs) that the bad cases copy and damage."""
    out = tmp_path_factory.mktemp("good-data")
    for split, n in (("train", 16), ("val", 4), ("test", 4)):
        write_jsonl(out / f"{split}.jsonl", load_split(demo_dir, split)[:n])
    return out


def run(name, tmp_path, capsys, *args, data_dir=None, lm=None):
    """Run one command in a fresh run folder; returns (exit code, stderr, run folder)."""
    main, flags, _ = COMMANDS[name]
    run_dir = tmp_path / "run"
    argv = [*flags, "--set", f"run_dir={run_dir}", "--set", "generator.device=cpu", "--set", "finetune.tiny.torch_threads=1"]
    if data_dir is not None:
        argv += ["--set", f"data.dir={data_dir}"]
    if lm is not None:
        argv += ["--set", f"generator.model={lm}"]
    capsys.readouterr()
    try:
        code = main([*argv, *args])
    except SystemExit as exc:  # argparse rejects a bad flag value itself, also with code 2
        code = exc.code
    return code, capsys.readouterr().err, run_dir


def assert_refused(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err  # one error line, no traceback
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_nothing_written(run_dir: Path):
    """No file at all under the run folder: no adapter, no model, no temporary or checkpoint folder
    that a later run could take for a complete artifact."""
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) if run_dir.exists() else []
    assert left == []


# ------------------------------------------------------------------ bad data files


def _truncated(good: Path) -> bytes:
    raw = (good / "train.jsonl").read_bytes()
    return raw[: len(raw) - 30]  # the last row cut mid-string, as a copy interrupted by a full disk


DATA_CASES = {
    # case: (file, bytes or a function of the good folder, fragments after the path)
    "malformed": ("train.jsonl", b'{"question": "What is a heap?", "answer": "A tree."}\n{"question": oops}\n', [":2: bad JSON", "python -m pipeline.prepare"]),
    "truncated": ("train.jsonl", _truncated, [":16: bad JSON", "python -m pipeline.prepare"]),
    "wrong-typed": ("train.jsonl", b'{"question": "What is a heap?", "answer": 42}\n', [":1: field 'answer' must be a string, got int", "python -m pipeline.prepare"]),
    "not-a-row": ("train.jsonl", b'["What is a heap?", "A tree."]\n', [":1: expected an object with 'question' and 'answer', got list"]),
    "non-utf8": ("train.jsonl", b'{"question": "Qu\'est-ce qu\'un caf\xe9?", "answer": "A drink."}\n', [":1: not UTF-8 (byte 0xe9", "UTF-8"]),
    "binary": ("train.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), [": looks binary (NUL bytes)", "UTF-8 text file"]),
    "empty-file": ("train.jsonl", b"", [": no valid question/answer records", "non-empty 'question' and 'answer'"]),
    "bad-val": ("val.jsonl", b'{"question": "What is a heap?"}\n', [":1: missing field 'answer'", "python -m pipeline.prepare"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_bad_data_file_is_refused_with_its_path_and_line(name, case, good_data, tiny_lm_dir, tmp_path, capsys):
    file, content, fragments = DATA_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(good_data, data)
    (data / file).write_bytes(content(good_data) if callable(content) else content)
    code, err, run_dir = run(name, tmp_path, capsys, data_dir=data, lm=tiny_lm_dir)
    assert_refused(code, err, *[f"{data / file}{fragments[0]}", *fragments[1:]])
    assert err.count("python -m pipeline.prepare") <= 1  # the fix said once, not once per wrapper
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_empty_data_folder_names_the_missing_split_and_the_prepare_command(name, tiny_lm_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err, run_dir = run(name, tmp_path, capsys, data_dir=empty, lm=tiny_lm_dir)
    assert_refused(code, err, f"{empty / 'train.jsonl'}: missing", f"python -m pipeline.prepare --input RAW --out {empty}")
    assert err.count("python -m pipeline.prepare") == 1
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("name", ["generator-plain", "rewriter"])
def test_questions_longer_than_the_training_window_are_refused_naming_the_setting(name, good_data, tiny_lm_dir, tmp_path, capsys):
    """Rows whose 100k-character question fills the whole max_seq_length leave no answer token to
    train on: refused before training, naming the setting to raise."""
    data = tmp_path / "data"
    shutil.copytree(good_data, data)
    rows = [{"question": f"Question {i}: " + "why is the sky blue " * 5000, "answer": "Rayleigh scattering."} for i in range(4)]
    write_jsonl(data / "train.jsonl", rows)
    section = "finetune.generator" if name.startswith("generator") else "finetune.rewriter"
    code, err, run_dir = run(name, tmp_path, capsys, "--set", f"{section}.max_seq_length=64", data_dir=data, lm=tiny_lm_dir)
    assert_refused(code, err, f"{section}.max_seq_length=64", f"raise {section}.max_seq_length")
    assert_nothing_written(run_dir)


# ------------------------------------------------------------------ bad configuration

CONFIG_CASES = {
    # case: (overrides, fragments of the error line)
    "unknown-key": (["retrieve.bogus=3"], ["unknown key 'retrieve.bogus' in section 'retrieve'", "valid keys: mode, top_k"]),
    "unknown-section": (["retreive.top_k=3"], ["unknown key 'retreive' in the top level", "valid keys: "]),
    "wrong-type": (["retrieve.top_k=five"], ["retrieve.top_k must be an integer; got 'five'"]),
    "negative-top-k": (["retrieve.top_k=-1"], ["retrieve.top_k must be > 0; got -1"]),
    "negative-top-n": (["rerank.top_n=-3"], ["rerank.top_n must be > 0; got -3"]),
    "malformed-override": (["retrieve.top_k"], ["override 'retrieve.top_k' has no '='", "section.key=value"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_override_is_refused_naming_the_key(name, case, good_data, tiny_lm_dir, tmp_path, capsys):
    overrides, fragments = CONFIG_CASES[case]
    args = [arg for o in overrides for arg in ("--set", o)]
    code, err, run_dir = run(name, tmp_path, capsys, *args, data_dir=good_data, lm=tiny_lm_dir)
    assert_refused(code, err, *fragments)
    assert_nothing_written(run_dir)


# each command's own section: a value its settings check refuses
OWN_SECTION_CASES = {
    "tiny": (["--set", "finetune.tiny.steps=-5"], "finetune.tiny.steps must be > 0; got -5"),
    "generator-plain": (["--set", "finetune.generator.epochs=0"], "finetune.generator.epochs must be > 0; got 0.0"),
    "generator-raft": (["--set", "finetune.raft.oracle_prob=1.5"], "finetune.raft.oracle_prob must be between 0 and 1; got 1.5"),
    "raft": (["--set", "finetune.raft.num_passages=0"], "finetune.raft.num_passages must be > 0; got 0"),
    "rewriter": (["--set", "finetune.rewriter.batch_size=-8"], "finetune.rewriter.batch_size must be > 0; got -8"),
    "reranker": (["--epochs", "-1"], "finetune.reranker.epochs must be > 0; got -1.0"),
    "embedder": (["--set", "finetune.embedder.learning_rate=fast"], "finetune.embedder.learning_rate must be a number; got 'fast'"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_value_in_the_commands_own_section_is_refused(name, good_data, tiny_lm_dir, tmp_path, capsys):
    args, fragment = OWN_SECTION_CASES[name]
    code, err, run_dir = run(name, tmp_path, capsys, *args, data_dir=good_data, lm=tiny_lm_dir)
    assert_refused(code, err, fragment)
    assert_nothing_written(run_dir)


PROFILE_CASES = {
    # case: (profile file bytes, fragments after the file path)
    "unknown-key": (b"profile: bad\nretrieve:\n  top_k: 5\n  topk: 7\n", ["unknown key 'retrieve.topk' in section 'retrieve'"]),
    "wrong-type": (b"profile: bad\nrerank:\n  top_n: [3]\n", ["rerank.top_n must be an integer; got [3]"]),
    "negative-top-k": (b"profile: bad\nretrieve:\n  top_k: -1\n", ["retrieve.top_k must be > 0; got -1"]),
    "not-a-mapping": (b"- retrieve\n- rerank\n", ["a config must be a mapping of sections; got list"]),
    "not-yaml": (b"retrieve: {top_k: 5\n", [" is not valid YAML"]),
    "non-utf8": (b"profile: caf\xe9\n", [" is not UTF-8 text"]),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), [" is not UTF-8 text"]),
}


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_profile_file_is_refused_naming_the_file(name, case, good_data, tiny_lm_dir, tmp_path, capsys):
    content, fragments = PROFILE_CASES[case]
    profile = tmp_path / "bad.yaml"
    profile.write_bytes(content)
    code, err, run_dir = run(name, tmp_path, capsys, "--config", str(profile), data_dir=good_data, lm=tiny_lm_dir)
    assert_refused(code, err, str(profile), *fragments)
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_profile_lists_the_profiles(name, tmp_path, capsys):
    code, err, run_dir = run(name, tmp_path, capsys, "--config", str(tmp_path / "nope.yaml"))
    assert_refused(code, err, f"config file '{tmp_path / 'nope.yaml'}' not found", "one of the profiles: ", "tiny")
    assert_nothing_written(run_dir)


# ------------------------------------------------------------------ missing model paths

# the model each command starts from, and the key that names it
MODEL_KEYS = {
    "generator-plain": "generator.model",
    "generator-raft": "generator.model",
    "rewriter": "generator.model",
    "reranker": "finetune.reranker.base_model",
    "embedder": "finetune.embedder.base_model",
}


@pytest.mark.parametrize("name", sorted(MODEL_KEYS))
def test_missing_model_path_is_refused_before_any_work(name, good_data, tmp_path, capsys):
    """A path inside the trusted model folders that does not exist: 'not found' with the fix. The
    reranker and embedder check it before mining (no knowledge base is built here, so a later
    check would report the missing index instead)."""
    missing = tmp_path / "nonexistent" / "model"
    code, err, run_dir = run(name, tmp_path, capsys, "--set", f"{MODEL_KEYS[name]}={missing}", data_dir=good_data)
    assert_refused(code, err, f"model '{missing}' not found", "check the path in the config")
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("name", sorted(MODEL_KEYS))
def test_model_path_outside_the_trusted_folders_is_refused(name, good_data, tmp_path, capsys):
    code, err, run_dir = run(name, tmp_path, capsys, "--set", f"{MODEL_KEYS[name]}=/nonexistent/model", data_dir=good_data)
    assert_refused(code, err, f"{MODEL_KEYS[name]}='/nonexistent/model'", "outside the folders models may be loaded from", "security.model_dirs")
    assert_nothing_written(run_dir)


# ------------------------------------------------------------------ bad flags


@pytest.mark.parametrize("limit", ["-1", "0", "ten"])
def test_raft_limit_must_be_a_positive_whole_number(limit, good_data, tmp_path, capsys):
    """--limit -1 used to slice off the last question, --limit 0 to write an empty file."""
    code, err, run_dir = run("raft", tmp_path, capsys, "--limit", limit, data_dir=good_data)
    assert_refused(code, err, f"argument --limit: must be a whole number >= 1; got '{limit}'")
    assert_nothing_written(run_dir)


def test_raft_refuses_the_test_split(good_data, tmp_path, capsys):
    code, err, run_dir = run("raft", tmp_path, capsys, "--split", "test", data_dir=good_data)
    assert_refused(code, err, "--split test: the test split is for evaluation only")
    assert_nothing_written(run_dir)


@pytest.mark.parametrize("case", ["heads", "corpus"])
def test_tiny_model_settings_that_cannot_build_are_refused(case, tmp_path, capsys):
    sets = {
        "heads": ["finetune.tiny.hidden_size=30", "finetune.tiny.num_heads=4", "finetune.tiny.corpus_max_chars=20000"],
        "corpus": ["finetune.tiny.corpus_max_chars=10", "finetune.tiny.vocab_size=300"],
    }[case]
    fragment = {
        "heads": "finetune.tiny.hidden_size (30) must be divisible by finetune.tiny.num_heads (4)",
        "corpus": "finetune.tiny.corpus_max_chars gives only 11 tokens, fewer than max_seq_len+1 (257); raise it",
    }[case]
    code, err, run_dir = run("tiny", tmp_path, capsys, *[a for s in sets for a in ("--set", s)])
    assert_refused(code, err, fragment)
    assert_nothing_written(run_dir)


# ------------------------------------------------------------------ a previous artifact survives


def _resolved(name, run_dir, key):
    from pipeline.config import load_config

    config = load_config("tiny", [f"run_dir={run_dir}"])
    section, _, field = key.rpartition(".")
    value = config
    for part in section.split("."):
        value = getattr(value, part)
    path = Path(getattr(value, field))
    return path.parent / f"{path.name}-triples" if name == "raft" else path


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_failed_run_leaves_the_previous_artifact_byte_identical(name, good_data, tiny_lm_dir, tmp_path, capsys):
    """The artifact of an earlier complete run stays exactly as it was when a new run is refused
    (bad data for the data commands, a bad setting for finetune.tiny)."""
    artifact = _resolved(name, tmp_path / "run", COMMANDS[name][2])
    artifact.mkdir(parents=True)
    files = {"adapter_config.json": json.dumps({"r": 8}), "adapter_model.safetensors": "previous weights", "ragft_config.yaml": "digest: previous\n"}
    for file, text in files.items():
        (artifact / file).write_text(text)
    data = tmp_path / "data"
    shutil.copytree(good_data, data)
    (data / "train.jsonl").write_bytes(b'{"question": "What is a heap?", "answer": 42}\n')
    bad = ["--set", "finetune.tiny.steps=-5"] if name == "tiny" else []
    code, err, run_dir = run(name, tmp_path, capsys, *bad, data_dir=data, lm=tiny_lm_dir)
    assert code == 2 and "error: " in err, err
    assert {p.name: p.read_text() for p in artifact.iterdir()} == files
    others = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and artifact not in p.parents)
    assert others == []
