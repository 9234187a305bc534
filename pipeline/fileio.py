"""Small file helpers shared by every package: writes are atomic (temporary name, then rename),
so an interrupted command never leaves a file that a later run would mistake for complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line (non-ASCII text kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically."""
    return atomic_write_text(path, jsonl_text(rows))


def atomic_write_many(texts: Mapping[str | Path, str]) -> None:
    """Write files that belong together (the splits of one run): each is written and synced under a
    temporary name first, and the renames follow only when every one is written, so a run that
    fails or is interrupted while writing leaves the previous set whole, never a mix of old and new."""
    staged: list[tuple[str, Path]] = []
    try:
        for target, text in texts.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            staged.append((tmp, target))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(output: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `output`; on success it replaces `output` at once.

    The temporary folder sits in the same parent (same file system), so the final step is two
    renames: an older `output` is moved aside, the new folder takes its name, the old one is
    deleted. On an exception the temporary folder is removed and `output` is left as it was.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final artifact is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / "previous")
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_complete_lines(path: str | Path) -> list[Any]:
    """The JSON values of an append-only JSON-lines file, one per COMPLETE line: the tail after the
    last newline is the torn write of a killed run and is ignored, as are undecodable lines.
    errors="replace": a kill can tear a line inside a multi-byte character. Split on "\n" only:
    splitlines would also cut at U+2028 and the like, which json.dumps(ensure_ascii=False) leaves
    inside strings."""
    path = Path(path)
    if not path.is_file():
        return []
    values = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return values


def append_lines(path: str | Path, values: Iterable[Any]) -> None:
    """Append JSON lines durably (fsync) to a file read by read_complete_lines, cutting off a torn
    last line first so that the new lines are not glued to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as handle:
        for value in values:
            handle.write(json.dumps(value, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

