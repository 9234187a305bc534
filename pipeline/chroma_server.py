"""A local Chroma server in a child process, for benchmarks and tests of the server mode.

    from pipeline.chroma_server import ChromaServer
    with ChromaServer("/tmp/chroma-data") as server:      # `chroma run` on 127.0.0.1, a free port
        config = load_config("tiny", [f"index.chroma_host={server.host}", f"index.chroma_port={server.port}"])
        ...                                               # stopped on exit, also on errors and Ctrl-C

Production deployments start `chroma run` themselves (see pipeline.index); this only manages a
throw-away server on the loopback interface, so nothing outside the machine can reach it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from pipeline.errors import UserFacingError

LOOPBACK = "127.0.0.1"
HEARTBEAT_PATH = "/api/v2/heartbeat"


class ChromaServerError(UserFacingError, RuntimeError):
    """The Chroma server could not be found or did not start; the message says why and what to do."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def chroma_executable() -> Optional[str]:
    """The `chroma` CLI installed beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "chroma"
    if beside.is_file():
        return str(beside)
    return shutil.which("chroma")


class ChromaServer:
    """`chroma run --path PATH --host 127.0.0.1 --port PORT` as a child process.

    `start()` returns once the server answers its heartbeat (or raises ChromaServerError with the
    tail of its log); `stop()` terminates it (killed after `stop_timeout` s). Use it as a context
    manager so it is stopped whatever happens inside the block."""

    def __init__(self, path: str | Path, *, port: Optional[int] = None, start_timeout: float = 60.0, stop_timeout: float = 30.0):
        self.path = Path(path)
        self.host = LOOPBACK  # loopback only: a benchmark or test server is never exposed
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.path.parent / f"{self.path.name}.chroma.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def heartbeat(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + HEARTBEAT_PATH, timeout=timeout) as response:
                return response.status == 200 and bool(json.loads(response.read() or b"{}"))
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def start(self) -> "ChromaServer":
        if self.process is not None:
            return self
        executable = chroma_executable()
        if executable is None:
            raise ChromaServerError("the `chroma` command is not installed; install chromadb in this environment (pip install chromadb), which provides it")
        self.path.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self.heartbeat():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ChromaServerError(f"the Chroma server exited with code {code} before answering on {self.url} (port taken? pass another port); its log:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ChromaServerError(f"the Chroma server did not answer {self.url}{HEARTBEAT_PATH} within {self.start_timeout:.0f} s; its log:\n{self._log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> "ChromaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
