"""The single writer: an exclusive file lock on the index folder, taken by ingestion; readers
never take it (Chroma's embedded client is thread-safe but not process-safe)."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.fileio import write_json
from pipeline.index.store import KnowledgeBaseError

LOCK_NAME = ".ingest.lock"
LOCK_INFO_NAME = ".ingest.lock.json"


class IndexLockedError(KnowledgeBaseError):
    """Another process is writing the index."""


class WriterLock:
    """An exclusive, non-blocking file lock on the index folder, with who holds it beside it.

    The OS releases the lock when the holder dies (flock), so a killed ingestion never leaves the
    index locked; the info file may then be stale and is simply overwritten by the next writer."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self._lock = None

    def acquire(self) -> "WriterLock":
        from filelock import FileLock, Timeout

        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.dir / LOCK_NAME), timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            holder = self.holder()
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
                if holder
                else "an unknown process"
            )
            raise IndexLockedError(
                f"index {self.dir} is being written by {who}; wait for it to finish (only one ingestion at a time; readers are not blocked)"
            ) from None
        self._lock = lock
        write_json(self.dir / LOCK_INFO_NAME, {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return self

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / LOCK_INFO_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._lock is not None:
            (self.dir / LOCK_INFO_NAME).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
