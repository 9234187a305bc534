"""The chat app's non-visual parts: which config it runs, pre-flight checks, feedback, uploads.

    streamlit run ui/app.py -- --config cpu --set retrieve.top_k=10      # flags after `--`
    RAGFT_CONFIG=cpu RAGFT_SET="retrieve.top_k=10 rerank.top_n=3" streamlit run ui/app.py

Uploads go through the knowledge base's own idempotent ingestion (`pipeline.index.ingest`) and its
single-writer lock: an `IngestionRunner` saves the accepted files into `ui.uploads_dir` and runs
ONE ingestion at a time in a background thread, mirroring `index.sources` plus that folder.
Readers never take the lock, so questions keep being answered from the current index while it
runs; the retrievers reload the stores once the ingestion has finished
(`KnowledgeBase.refresh_if_changed`). A second upload while one runs, or while another process
(e.g. `python -m pipeline.index`) holds the lock, is refused with a message naming the holder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pipeline.config import Config, ConfigError, add_config_arguments, load_config
from pipeline.index import IndexLockedError, KnowledgeBaseError, SourceError, WriterLock, read_manifest
from pipeline.models import ModelNotFoundError, resolve_model
from pipeline.systems import uses_finetuned_embedder

logger = logging.getLogger(__name__)

CONFIG_ENV = "RAGFT_CONFIG"
OVERRIDES_ENV = "RAGFT_SET"
UPLOAD_SUFFIXES = (".md", ".markdown", ".txt", ".pdf")


# ------------------------------------------------------------------------------------------------
# which config: flags after `--`, else environment variables, else the default profile (smollm2)
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlit run ui/app.py --",
        description="ragft chat app. Flags go after `--`; the environment variables RAGFT_CONFIG (profile) and RAGFT_SET (space-separated section.key=value overrides, shell-quoted) do the same, flags win.",
        add_help=False,
        allow_abbrev=False,
    )
    add_config_arguments(parser)
    parser.add_argument("--help", action="store_true", help="Show this help in the page.")
    return parser


@dataclass(frozen=True)
class AppSettings:
    """What the app was started with (hashable: the key of its cached resources)."""

    profile: Optional[str]
    overrides: tuple[str, ...]
    origin: str  # where the profile choice came from, shown in the sidebar
    show_help: bool = False
    show_help_config: bool = False

    def load(self) -> Config:
        return load_config(self.profile, self.overrides)


def resolve_settings(argv: Sequence[str], environ: Optional[dict[str, str]] = None) -> AppSettings:
    """Flags (`--config`, `--set`, repeatable) win over RAGFT_CONFIG / RAGFT_SET; default: the default profile (smollm2).
    Unknown arguments are ignored (Streamlit and test runners put their own there)."""
    environ = dict(os.environ if environ is None else environ)
    args, _unknown = build_parser().parse_known_args(list(argv))
    env_profile = environ.get(CONFIG_ENV) or None
    try:
        env_overrides = shlex.split(environ.get(OVERRIDES_ENV, ""))
    except ValueError as exc:
        raise ConfigError(f"{OVERRIDES_ENV}={environ.get(OVERRIDES_ENV)!r} is not valid shell quoting ({exc}); write e.g. RAGFT_SET=\"retrieve.top_k=10 rerank.top_n=3\"") from None
    if args.config:
        profile, origin = args.config, "--config"
    elif env_profile:
        profile, origin = env_profile, CONFIG_ENV
    else:
        profile, origin = None, "default"
    return AppSettings(profile=profile, overrides=tuple([*env_overrides, *args.overrides]), origin=origin, show_help=args.help, show_help_config=args.help_config)


# ------------------------------------------------------------------------------------------------
# pre-flight: what a system needs that is not built yet
# ------------------------------------------------------------------------------------------------


def missing_parts(components: Any, spec: Any) -> list[str]:
    """Messages (each with the command that builds the part) for what `spec` needs and lacks.
    Cheap: checks files, loads no model."""
    from pipeline.engine import ArtifactMissingError

    config: Config = components.config
    problems: list[str] = []
    if spec.retrieve is not None:
        try:
            if read_manifest(config.index.dir) is None:
                problems.append(f"the knowledge base is not built: no index at {config.index.dir}. Build it with `python -m pipeline.index --config {config.profile}`")
        except KnowledgeBaseError as exc:
            problems.append(str(exc))
    if uses_finetuned_embedder(config, spec):
        try:
            if read_manifest(config.index.finetuned_dir) is None:
                problems.append(f"the fine-tuned embedder's index is not built: no index at {config.index.finetuned_dir}. Build it (and the embedder) with `python -m eval.compare --config {config.profile} --systems {spec.name} --limit 1`")
        except KnowledgeBaseError as exc:
            problems.append(str(exc))
    needs_lm = spec.generator is not None or spec.rewrite
    if needs_lm and config.generator.backend == "hf":
        try:
            resolve_model(config.generator.model, allow_download=False)
        except ModelNotFoundError as exc:
            problems.append(str(exc))
    checks: list[Callable[[], Any]] = []
    if spec.generator is not None:
        checks.append(lambda: components.adapter_path(spec.generator))
    if spec.rewrite and spec.rewriter_adapter:
        checks.append(lambda: components.adapter_path("rewriter"))
    if spec.rerank:
        checks.append(components.reranker)  # cheap: every reranker loads its model lazily
    for check in checks:
        try:
            check()
        except ArtifactMissingError as exc:
            problems.append(str(exc))
    return problems


# ------------------------------------------------------------------------------------------------
# feedback
# ------------------------------------------------------------------------------------------------

_append_lock = threading.Lock()


def append_jsonl(path: str | Path, record: dict[str, Any]) -> Path:
    """Append one JSON line with a single write (O_APPEND: concurrent appenders never interleave
    within a line) and fsync, so feedback survives a crash of the app."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with _append_lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# uploads
# ------------------------------------------------------------------------------------------------


class UploadRefused(ValueError):
    """An upload the app will not ingest; the message says why and what to do."""


def safe_filename(name: str) -> str:
    """The base name of an uploaded file with only [A-Za-z0-9._-] (no folders, no leading dot)."""
    base = re.split(r"[\\/]", str(name))[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._")
    return cleaned or "upload"


def check_upload(name: str, size: int, max_mb: int, data: Optional[bytes] = None) -> str:
    """The name the file is saved under, or UploadRefused naming the file and the rule.

    With `data`, the content is checked too, so that a file ingestion could not read is refused
    now, with a message, rather than saved, skipped in the background and removed again: a text
    file (.md, .markdown, .txt) must be UTF-8 text without NUL bytes and not only whitespace, a
    .pdf must start like one."""
    suffix = Path(str(name)).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadRefused(f"{name}: unsupported file type {suffix or '(no extension)'!r}; upload {', '.join(UPLOAD_SUFFIXES)} files")
    if size > max_mb * 1024 * 1024:
        raise UploadRefused(f"{name}: {size / 1024 / 1024:.1f} MB is over the upload limit of {max_mb} MB (ui.upload_max_mb)")
    if size == 0:
        raise UploadRefused(f"{name}: the file is empty")
    if data is not None and suffix == ".pdf":
        if b"%PDF-" not in data[:1024]:  # the header may follow a few bytes of junk; readers accept that
            raise UploadRefused(f"{name}: not a PDF (no %PDF- header); upload the document itself, or save text as .txt")
    elif data is not None:
        if b"\x00" in data[:8192]:  # the same test as ingestion's (pipeline.index.read_document)
            raise UploadRefused(f"{name}: binary content (NUL bytes), not {suffix} text; upload a UTF-8 text file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UploadRefused(f"{name}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); re-save it as UTF-8 and upload it again") from None
        if not text.strip():
            raise UploadRefused(f"{name}: the file holds only whitespace, no text")
    return safe_filename(name)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # the temporary name starts with '.', which ingestion's folder scan skips
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_report(report: Any) -> str:
    """A short line for the page: passages added/unchanged/removed, the total, the time."""
    try:
        return (
            f"passages: {report.nodes_added} added, {report.nodes_unchanged} unchanged, {report.nodes_removed} removed; "
            f"{report.nodes_total} in the knowledge base ({report.seconds:.1f} s)"
        )
    except AttributeError:
        return report.summary() if hasattr(report, "summary") else str(report)


@dataclass
class IngestStatus:
    state: str = "idle"  # idle | running | done | failed
    files: list[str] = field(default_factory=list)
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    started: Optional[float] = None
    finished: Optional[float] = None
    job: int = 0  # increments with every submitted ingestion

    @property
    def running(self) -> bool:
        return self.state == "running"


class IngestionRunner:
    """One background ingestion at a time (per process; the index's file lock covers the others).

    `ingest_fn` and `embed_model_factory` exist for tests; by default the real
    `pipeline.index.ingest` runs with the runner's own embedder (loaded once, on the first upload:
    a separate instance, because a fast tokenizer used by two threads at once can fail with
    'Already borrowed' while the chat thread embeds a question)."""

    def __init__(self, config: Config, *, ingest_fn: Optional[Callable[..., Any]] = None, embed_model_factory: Optional[Callable[[], Any]] = None) -> None:
        self.config = config
        self.uploads_dir = Path(config.ui.uploads_dir)
        self._ingest_fn = ingest_fn
        self._embed_model_factory = embed_model_factory
        self._embed_model: dict[str, Any] = {}  # by index.embed_model
        self._lock = threading.Lock()
        self._status = IngestStatus()
        self._thread: Optional[threading.Thread] = None

    def status(self) -> IngestStatus:
        with self._lock:
            return replace(self._status, files=list(self._status.files), warnings=list(self._status.warnings))

    def wait(self, timeout: Optional[float] = None) -> IngestStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def sources(self) -> list[str]:
        """What every ingestion from the app mirrors: the profile's sources plus the uploads."""
        sources = list(self.config.index.sources)
        if str(self.uploads_dir) not in sources:
            sources.append(str(self.uploads_dir))
        return sources

    def submit(self, files: Sequence[tuple[str, bytes]]) -> IngestStatus:
        """Save `files` ((name, bytes), already checked with `check_upload`) and start ingesting.
        Raises UploadRefused while an ingestion runs here or another process holds the lock."""
        if not files:
            raise UploadRefused("no file to ingest")
        with self._lock:
            if self._status.running:
                raise UploadRefused(
                    f"an ingestion of {', '.join(self._status.files)} is still running (started {time.time() - (self._status.started or time.time()):.0f} s ago); "
                    "wait for it to finish, then upload again"
                )
            # refuse now, with the holder's name, rather than after saving the files
            try:
                WriterLock(self.config.index.dir).acquire().release()
            except IndexLockedError as exc:
                raise UploadRefused(f"cannot add documents now: {exc}") from None
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
            names, created = [], []
            for name, data in files:
                target = self.uploads_dir / safe_filename(name)
                if not target.exists():
                    created.append(target)
                _atomic_write_bytes(target, data)
                names.append(target.name)
            self._status = IngestStatus(state="running", files=names, message=f"ingesting {', '.join(names)}", started=time.time(), job=self._status.job + 1)
            self._thread = threading.Thread(target=self._run, args=(names, created), name="ragft-ingest", daemon=True)
            self._thread.start()
            return replace(self._status, files=list(names))

    def _embedder(self, config: Optional[Config] = None) -> Any:
        """The embedder of `config`'s index (default: the base one), loaded once per index."""
        config = config or self.config
        key = config.index.embed_model
        if key not in self._embed_model:
            if self._embed_model_factory is not None:
                self._embed_model[key] = self._embed_model_factory()
            else:
                from pipeline.encoders import load_embedder

                self._embed_model[key] = load_embedder(config)
        return self._embed_model[key]

    def _run(self, names: list[str], created: list[Path]) -> None:
        warnings: list[str] = []
        try:
            from pipeline.index import ingest_all_indexes

            # every index the systems search (the fine-tuned embedder's too); the base index's report is the one shown
            report = ingest_all_indexes(self.config, sources=self.sources(), embedder_for=self._embedder, ingest_fn=self._ingest_fn, show_progress=False, log=lambda *_: None, warn=warnings.append)[0]
            # an upload the readers could not parse would be retried (and skipped) on every run
            for skipped in getattr(report, "skipped_files", []) or []:
                path = Path(skipped)
                if path.parent.resolve() == self.uploads_dir.resolve():
                    path.unlink(missing_ok=True)
                    warnings.append(f"removed {path.name} from the uploads: it could not be read")
            self._finish("done", f"added {', '.join(names)}: {describe_report(report)}", warnings)
        except IndexLockedError as exc:
            self._remove(created)
            self._finish("failed", f"cannot add documents now: {exc}", warnings)
        except SourceError as exc:
            self._remove(created)
            self._finish("failed", f"{exc}; the upload was removed", warnings)
        except Exception as exc:  # shown in the page; the traceback goes to the server log
            logger.exception("ingestion of %s failed", names)
            self._remove(created)
            self._finish("failed", f"ingestion failed ({exc.__class__.__name__}: {exc}); the upload was removed", warnings)

    @staticmethod
    def _remove(paths: Sequence[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def _finish(self, state: str, message: str, warnings: list[str]) -> None:
        with self._lock:
            self._status = replace(self._status, state=state, message=message, warnings=list(warnings), finished=time.time())
