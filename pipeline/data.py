"""Question/answer data: load and validate, de-duplicate (exact, then semantic), split.

The stages reproduce the reference experiment exactly: exact de-duplication on
`question.strip().lower()` keeping the first occurrence; greedy semantic de-duplication that drops
a question whose normalized MiniLM embedding has cosine similarity > threshold with any question
kept before it; then `random.Random(seed).shuffle` and boundaries `int(fraction * n)`.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipeline.errors import UserFacingError

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "val", "test")
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")
REQUIRED_FIELDS = ("question", "answer")


class DataError(UserFacingError, ValueError):
    """A data file or row is invalid; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class InvalidRow:
    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass
class LoadResult:
    records: list[dict[str, str]]
    skipped: list[InvalidRow] = field(default_factory=list)


def _check_record(obj: Any, path: str, line: int) -> dict[str, str] | InvalidRow:
    if not isinstance(obj, dict):
        return InvalidRow(path, line, f"expected an object with 'question' and 'answer', got {type(obj).__name__}")
    record: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        if name not in obj or obj[name] is None:
            return InvalidRow(path, line, f"missing field '{name}'")
        value = obj[name]
        if not isinstance(value, str):
            return InvalidRow(path, line, f"field '{name}' must be a string, got {type(value).__name__} ({value!r:.40})")
        if not value.strip():
            return InvalidRow(path, line, f"field '{name}' is empty")
        record[name] = value
    return record


def _json_problem(exc: json.JSONDecodeError) -> str:
    # some messages end in "at" already ("Unterminated string starting at")
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _jsonl_rows(raw: bytes, path: str) -> list[tuple[int, Any] | InvalidRow]:
    rows: list[tuple[int, Any] | InvalidRow] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
            line_bytes = line_bytes[3:]  # a UTF-8 byte-order mark (Windows editors), as .json and .csv accept
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(InvalidRow(path, number, f"not UTF-8 (byte {line_bytes[exc.start]:#04x} at column {exc.start + 1}; re-save the file as UTF-8)"))
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            rows.append(InvalidRow(path, number, f"bad JSON ({_json_problem(exc)})"))
    return rows


def _decode_whole(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x}); re-save the file as UTF-8") from None


def _json_rows(raw: bytes, path: str) -> list[tuple[int, Any] | InvalidRow]:
    text = _decode_whole(raw, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: bad JSON ({_json_problem(exc)}); a .json file must hold one list of objects") from None
    if not isinstance(data, list):
        raise DataError(f"{path}:1: a .json file must hold a list of objects, got {type(data).__name__}; use .jsonl for one object per line")
    # A JSON list has no line per item; report the item's position (1-based) as its line.
    return [(index, item) for index, item in enumerate(data, start=1)]


def _csv_rows(raw: bytes, path: str) -> list[tuple[int, Any] | InvalidRow]:
    text = _decode_whole(raw, path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        raise DataError(f"{path}:1: CSV header {header} lacks {', '.join(missing)}; the header row must name 'question' and 'answer'")
    rows: list[tuple[int, Any] | InvalidRow] = []
    for row in reader:
        if None in row:  # more cells than header columns
            rows.append(InvalidRow(path, reader.line_num, f"{len(header) + len(row[None])} cells for {len(header)} header columns"))
            continue
        rows.append((reader.line_num, row))
    return rows


READERS: dict[str, Callable[[bytes, str], list]] = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}


def load_records(path: str | Path, *, skip_invalid: bool = False, fix: str = "fix the row or pass --skip-invalid to skip invalid rows") -> LoadResult:
    """Read question/answer records from .jsonl, .json (a list) or .csv and validate each row.

    By default the first invalid row raises `DataError` naming the file, line and problem; with
    `skip_invalid=True` invalid rows are collected in `LoadResult.skipped` instead. `fix` ends the
    message of an invalid row (what the calling command lets the user do about it).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; pass an existing .jsonl, .json or .csv file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass a .jsonl, .json or .csv file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path}: looks binary (NUL bytes), not {path.suffix} text; pass a UTF-8 text file of question/answer rows")
    records: list[dict[str, str]] = []
    skipped: list[InvalidRow] = []
    for item in reader(raw, str(path)):
        checked = item if isinstance(item, InvalidRow) else _check_record(item[1], str(path), item[0])
        if isinstance(checked, InvalidRow):
            if not skip_invalid:
                raise DataError(f"{checked}; {fix}")
            skipped.append(checked)
        else:
            records.append(checked)
    if not records:
        reason = f" ({len(skipped)} invalid rows skipped)" if skipped else ""
        raise DataError(f"{path}: no valid question/answer records{reason}; each row needs non-empty 'question' and 'answer' strings")
    return LoadResult(records, skipped)


def exact_dedup(records: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Keep the first record of each `question.strip().lower()`."""
    seen: set[str] = set()
    kept = []
    for record in records:
        key = record["question"].strip().lower()
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def greedy_semantic_keep(embeddings: "np.ndarray", threshold: float) -> list[int]:
    """Indices kept by greedy de-duplication of L2-normalized row vectors: a row is dropped when
    its cosine similarity with any row kept before it is greater than `threshold`."""
    import numpy as np

    kept: list[int] = []
    kept_matrix = np.empty((len(embeddings), embeddings.shape[1]), dtype=embeddings.dtype)
    for index, vector in enumerate(embeddings):
        if kept and float(np.max(kept_matrix[: len(kept)] @ vector)) > threshold:
            continue
        kept_matrix[len(kept)] = vector
        kept.append(index)
    return kept


def semantic_dedup(
    records: Sequence[dict[str, str]],
    embed: Callable[[list[str]], "np.ndarray"],
    threshold: float,
) -> list[dict[str, str]]:
    """Greedy semantic de-duplication on question embeddings (`embed` returns normalized rows)."""
    if not records:
        return []
    embeddings = embed([record["question"] for record in records])
    return [records[i] for i in greedy_semantic_keep(embeddings, threshold)]


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"split ratios {list(ratios)} must be three non-negative fractions summing to 1, e.g. 0.7,0.15,0.15")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def split_records(records: Sequence[dict[str, str]], ratios: Sequence[float], seed: int) -> dict[str, list[dict[str, str]]]:
    """Shuffle a copy with `random.Random(seed)`; train = int(r0*n), val = int(r1*n), test = rest."""
    train_ratio, val_ratio, _ = check_ratios(ratios)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_train, n_val = int(n * train_ratio), int(n * val_ratio)
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }


def load_split(data_dir: str | Path, split: str) -> list[dict[str, str]]:
    """A prepared split (`train`, `val` or `test`) from a folder written by `pipeline.prepare`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing; prepare the data first: python -m pipeline.prepare --input RAW --out {data_dir}")
    # --skip-invalid is pipeline.prepare's flag: commands reading a prepared split point there
    fix = f"fix the row, or prepare the data again: python -m pipeline.prepare --input RAW --out {data_dir} (--skip-invalid drops bad rows)"
    return load_records(path, fix=fix).records

def open_book_corpus(data_dir: str | Path) -> tuple[list[Any], dict[str, list[str]], dict[str, list[set[str]]]]:
    """Passages (every answer of train+val+test as a node, id `<split>-<line index>`), and per
    split its questions and the relevant passage id of each: its own answer only, as the protocol
    says (the seed data has 31 answers repeated verbatim; a twin ranked first counts as a miss,
    which is how the known figures were measured)."""
    from llama_index.core.schema import TextNode

    nodes, questions, relevant = [], {}, {}
    keys = ["split", "question", "answer"]
    for split in SPLITS:
        records = load_split(data_dir, split)
        questions[split], relevant[split] = [], []
        for i, record in enumerate(records):
            node_id = f"{split}-{i}"
            nodes.append(TextNode(id_=node_id, text=record["answer"], metadata={"split": split, "question": record["question"], "answer": record["answer"]}, excluded_embed_metadata_keys=list(keys), excluded_llm_metadata_keys=list(keys)))
            questions[split].append(record["question"])
            relevant[split].append({node_id})
    return nodes, questions, relevant
