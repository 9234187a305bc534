"""Knowledge base: idempotent ingestion of question/answer pairs and documents into Chroma + BM25.

    python -m pipeline.index                                        # tiny profile: the demo train pairs
    python -m pipeline.index --config cpu --source docs/ --source notes.md
    python -m pipeline.index --config tiny --rebuild                # start from an empty index
    python -m pipeline.index --config tiny --set index.chroma_host=127.0.0.1 --set index.chroma_port=8000

What goes in: every question/answer pair of `data.knowledge_splits` (one node each, text
"Question: ...\\nAnswer: ...", metadata id/question/answer/source/split) and every document file or
folder of `index.sources` plus `--source` (.md, .txt, .pdf, .html; markdown headings are respected,
HTML headings become markdown headings first; chunks of `index.chunk_size` tokens with
`index.chunk_overlap`). The index mirrors exactly these inputs: a document ingested earlier but
absent now is removed, a changed one is re-embedded, an unchanged one is skipped.

Layout of `index.dir` (one writer at a time, any number of readers):

    manifest.json        format version, embedder, state (ingesting|complete), generation, counts
    ragft_config.yaml    the resolved config of the last ingestion
    docstore.json        the IngestionPipeline docstore: input documents and their content hashes
    nodes.json           every node (text + metadata, no vectors): the source BM25 is rebuilt from
    chroma/              Chroma PersistentClient data (absent with index.chroma_host: server mode)
    bm25/                bm25s index + the node fingerprint it was built from
    .ingest.lock(.json)  the writer's lock and who holds it

Why this shape: LlamaIndex's `IngestionPipeline` de-duplicates by document id and hash against a
persisted docstore, and ids here are derived from content (QA pairs) or the resolved file path
(documents), so re-running adds nothing. Work is done in checkpoints of `index.checkpoint_every`
documents (Chroma first, then nodes.json, then docstore.json, each written atomically), so a killed
run leaves at most one checkpoint half-done; Chroma ignores ids it already holds, so the next run
completes it without duplicates. With Chroma the index's own docstore is empty, which is why the
nodes are kept in nodes.json for BM25.

Python API (the retrieval side lives in `pipeline.retrieve`):

    from pipeline.index import ingest, open_index
    report = ingest(config)                     # IngestReport: documents, added, unchanged, removed, ...
    kb = open_index(config)                     # KnowledgeBase: lazy stores, never takes the lock
    kb.counts()                                 # {"chroma": n, "bm25": n, "nodes": n}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from pipeline.config import Config, add_config_arguments, config_from_args, load_config, save_resolved_config
from pipeline.data import load_split
from pipeline.errors import UserFacingError, run_cli
from pipeline.fileio import write_json

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode, Document, TextNode
    from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever
    from llama_index.vector_stores.chroma import ChromaVectorStore

logger = logging.getLogger(__name__)

INDEX_FORMAT = "ragft-index/1"
MANIFEST_NAME = "manifest.json"
DOCSTORE_NAME = "docstore.json"
NODESTORE_NAME = "nodes.json"
CHROMA_DIRNAME = "chroma"
BM25_DIRNAME = "bm25"
BM25_META_NAME = "ragft_bm25.json"
LOCK_NAME = ".ingest.lock"
LOCK_INFO_NAME = ".ingest.lock.json"
DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt", ".pdf", ".html", ".htm")
# Metadata is for people and later stages; it never enters embeddings, BM25 or prompts (the text
# already holds the question and answer), so every key is excluded from both metadata modes.
QA_METADATA_KEYS = ["id", "question", "answer", "source", "split", "kind"]
DOC_METADATA_KEYS = ["id", "source", "file_name", "heading", "chunk", "kind"]


class KnowledgeBaseError(UserFacingError, RuntimeError):
    """The index folder is missing, damaged, incompatible, or built with other settings."""


class IndexLockedError(KnowledgeBaseError):
    """Another process is writing the index."""


class SourceError(UserFacingError, ValueError):
    """A document source is empty or unusable; the message names it."""


# --------------------------------------------------------------------------------------------
# ids and nodes
# --------------------------------------------------------------------------------------------


def _digest(*parts: str, length: int = 20) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


def qa_text(question: str, answer: str) -> str:
    """The text of a question/answer node: what is embedded, searched and shown to the generator."""
    return f"Question: {question}\nAnswer: {answer}"


def qa_node_id(question: str, answer: str) -> str:
    """The node id of a question/answer pair: derived from its content, the same on every machine."""
    return "qa-" + _digest(qa_text(question, answer))


def qa_documents(config: Config) -> tuple[list["Document"], int]:
    """One Document per distinct QA pair of `data.knowledge_splits`; also the number of exact
    duplicates dropped (they would map to the same content-derived id)."""
    from llama_index.core.schema import Document

    documents: list[Document] = []
    seen: set[str] = set()
    duplicates = 0
    for split in config.data.knowledge_splits:
        source = str(Path(config.data.dir) / f"{split}.jsonl")
        for record in load_split(config.data.dir, split):
            node_id = qa_node_id(record["question"], record["answer"])
            if node_id in seen:
                duplicates += 1
                continue
            seen.add(node_id)
            documents.append(
                Document(
                    id_="qa:" + node_id[3:],
                    text=qa_text(record["question"], record["answer"]),
                    metadata={"id": node_id, "question": record["question"], "answer": record["answer"], "source": source, "split": split, "kind": "qa"},
                    excluded_embed_metadata_keys=list(QA_METADATA_KEYS),
                    excluded_llm_metadata_keys=list(QA_METADATA_KEYS),
                )
            )
    return documents, duplicates


def qa_nodes(records: Iterable[dict[str, str]], *, source: str = "", split: str = "") -> list["TextNode"]:
    """QA records as nodes exactly like ingestion makes them (for in-memory knowledge bases)."""
    from llama_index.core.schema import TextNode

    nodes, seen = [], set()
    for record in records:
        node_id = qa_node_id(record["question"], record["answer"])
        if node_id in seen:
            continue
        seen.add(node_id)
        nodes.append(
            TextNode(
                id_=node_id,
                text=qa_text(record["question"], record["answer"]),
                metadata={"id": node_id, "question": record["question"], "answer": record["answer"], "source": source, "split": split, "kind": "qa"},
                excluded_embed_metadata_keys=list(QA_METADATA_KEYS),
                excluded_llm_metadata_keys=list(QA_METADATA_KEYS),
            )
        )
    return nodes


# --------------------------------------------------------------------------------------------
# reading documents
# --------------------------------------------------------------------------------------------


def _looks_binary(raw: bytes) -> bool:
    return b"\x00" in raw[:8192]


def _html_to_markdown(html: str) -> str:
    """Visible text of an HTML page with h1..h6 turned into markdown headings, so the same
    structure-aware splitter applies; scripts and styles are dropped (retrieved text is data)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    for level in range(1, 7):
        for tag in soup.find_all(f"h{level}"):
            tag.replace_with(f"\n\n{'#' * level} {tag.get_text(' ', strip=True)}\n\n")
    lines = [line.strip() for line in soup.get_text("\n").splitlines()]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def read_document(path: Path) -> "Document":
    """One Document per file through LlamaIndex's file readers; raises ValueError when the file
    is binary, not UTF-8, unreadable or has no text."""
    from llama_index.core.schema import Document

    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from llama_index.readers.file import PDFReader

        try:
            pages = PDFReader(return_full_document=True).load_data(path)
        except Exception as exc:  # pypdf raises many types on damaged files
            raise ValueError(f"cannot read PDF ({exc.__class__.__name__}: {exc})") from None
        text = "\n\n".join(page.text for page in pages)
        fmt = "pdf"
    else:
        raw = path.read_bytes()
        if _looks_binary(raw):
            raise ValueError("binary content (NUL bytes) in a text file")
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
        if suffix in (".html", ".htm"):
            text, fmt = _html_to_markdown(decoded), "markdown"
        else:
            from llama_index.readers.file import FlatReader

            text = FlatReader().load_data(path)[0].text
            fmt = "markdown" if suffix in (".md", ".markdown") else "text"
    if not text.strip():
        raise ValueError("no text")
    resolved = str(path.resolve())
    return Document(
        id_="file:" + resolved,
        text=text,
        metadata={"source": resolved, "file_name": path.name, "format": fmt, "kind": "document"},
        excluded_embed_metadata_keys=[*DOC_METADATA_KEYS, "format"],
        excluded_llm_metadata_keys=[*DOC_METADATA_KEYS, "format"],
    )


def source_files(source: str | Path) -> list[Path]:
    """The document files of a source (a file or a folder, searched recursively, sorted)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"source {path} does not exist; pass a file or folder of {', '.join(DOCUMENT_SUFFIXES)} files")
    if path.is_file():
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            raise SourceError(f"source {path} has suffix {path.suffix!r}; supported: {', '.join(DOCUMENT_SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise SourceError(f"source folder {path} holds no {', '.join(DOCUMENT_SUFFIXES)} files; nothing to ingest from it")
    return files


def read_sources(sources: Sequence[str], *, show_progress: bool = True, warn: Callable[[str], None] | None = None) -> tuple[list["Document"], list[str]]:
    """Read every document of `sources`; unreadable files are skipped with a warning naming them."""
    from tqdm.auto import tqdm

    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    files: list[Path] = []
    for source in sources:
        files.extend(source_files(source))
    documents, skipped = [], []
    seen: set[str] = set()
    for path in tqdm(files, desc="reading", unit="file", disable=not show_progress or not files):
        key = str(path.resolve())
        if key in seen:
            continue
        seen.add(key)
        try:
            documents.append(read_document(path))
        except (OSError, ValueError) as exc:
            skipped.append(str(path))
            warn(f"skipped {path}: {exc}")
    if files and not documents:
        raise SourceError(f"no readable document in {', '.join(map(str, sources))} ({len(skipped)} skipped); see the warnings above")
    return documents, skipped


# --------------------------------------------------------------------------------------------
# transformations (LlamaIndex TransformComponents used by the IngestionPipeline)
# --------------------------------------------------------------------------------------------


def _structure_splitter_cls():
    from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter
    from llama_index.core.schema import NodeRelationship, TextNode, TransformComponent

    class StructureAwareSplitter(TransformComponent):
        """QA documents stay one node each; markdown (and HTML turned markdown) is cut at headings,
        then every section (and plain text) into chunks of `chunk_size` tokens with `chunk_overlap`.
        Node ids: QA pairs keep their content id; chunks get sha256(source path, text, ordinal)."""

        chunk_size: int = 512
        chunk_overlap: int = 64

        def __call__(self, nodes, **kwargs):
            splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=min(self.chunk_overlap, self.chunk_size // 2))
            markdown = MarkdownNodeParser(include_metadata=True, include_prev_next_rel=False)
            out = []
            for doc in nodes:
                if doc.metadata.get("kind") == "qa":
                    out.append(
                        TextNode(
                            id_=doc.metadata["id"],
                            text=doc.text,
                            metadata=dict(doc.metadata),
                            excluded_embed_metadata_keys=list(doc.excluded_embed_metadata_keys),
                            excluded_llm_metadata_keys=list(doc.excluded_llm_metadata_keys),
                            relationships={NodeRelationship.SOURCE: doc.as_related_node_info()},
                        )
                    )
                    continue
                if doc.metadata.get("format") == "markdown":
                    sections = []
                    for section in markdown.get_nodes_from_documents([doc]):
                        path = [p for p in section.metadata.get("header_path", "/").split("/") if p]
                        first = section.text.lstrip().split("\n", 1)[0]
                        if first.startswith("#"):
                            path.append(first.lstrip("#").strip())
                        sections.append((" / ".join(path), section.text))
                else:
                    sections = [("", doc.text)]
                seen: dict[str, int] = {}
                chunk_no = 0
                for heading, section_text in sections:
                    for chunk in splitter.split_text(section_text):
                        if not chunk.strip():
                            continue
                        ordinal = seen.get(chunk, 0)
                        seen[chunk] = ordinal + 1
                        node_id = "doc-" + _digest(doc.metadata["source"], chunk, str(ordinal))
                        metadata = {k: v for k, v in doc.metadata.items() if k != "format"}
                        metadata.update({"id": node_id, "heading": heading, "chunk": chunk_no})
                        out.append(
                            TextNode(
                                id_=node_id,
                                text=chunk,
                                metadata=metadata,
                                excluded_embed_metadata_keys=list(DOC_METADATA_KEYS),
                                excluded_llm_metadata_keys=list(DOC_METADATA_KEYS),
                                relationships={NodeRelationship.SOURCE: doc.as_related_node_info()},
                            )
                        )
                        chunk_no += 1
            return out

    return StructureAwareSplitter


# --------------------------------------------------------------------------------------------
# lock: one writer, readers never take it
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# stores
# --------------------------------------------------------------------------------------------


def _chroma_client(config: Config, index_dir: Path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if config.index.chroma_host:
        try:
            return chromadb.HttpClient(host=config.index.chroma_host, port=config.index.chroma_port, settings=settings)
        except Exception as exc:
            raise KnowledgeBaseError(
                f"cannot reach the Chroma server at {config.index.chroma_host}:{config.index.chroma_port} ({exc}); "
                f"start it with `chroma run --path DIR --host {config.index.chroma_host} --port {config.index.chroma_port}` "
                "or unset index.chroma_host to use the embedded store"
            ) from None
    return chromadb.PersistentClient(path=str(index_dir / CHROMA_DIRNAME), settings=settings)


def _forget_chroma_system(index_dir: Path, *, stop: bool = True) -> None:
    """Chroma caches one client system per persist path for the whole process; after the folder
    is deleted that cached system would write into a removed database ("readonly database"). Drop
    just this path's entry (chromadb has no public call for one path; clear_system_cache drops all).
    `stop=False` leaves the dropped system running: other threads may be searching it right now
    (a stopped system fails their queries); it is freed when their last collection goes away."""
    from chromadb.api.shared_system_client import SharedSystemClient

    key = str(index_dir / CHROMA_DIRNAME)
    with _CHROMA_LOCK:
        system = SharedSystemClient._identifier_to_system.pop(key, None)
        SharedSystemClient._identifier_to_refcount.pop(key, None)
    if system is not None and stop:
        try:
            system.stop()
        except Exception:  # already half torn down: nothing more to release
            pass


# Generation of the index each cached embedded Chroma system was opened at, per path. Chroma keeps
# its HNSW index in memory per process: a reader process does not see vectors another process
# wrote later (it sees the new count but searches the old graph). When the manifest's generation
# moved on, the cached system is dropped once, so the next client loads the index from disk.
_CHROMA_GENERATION: dict[str, int] = {}
# Serializes the check-drop-create sequence: readers in several threads (the UI, benchmarks) reload
# at the same moment, and chromadb's own system cache is not safe against a concurrent drop.
_CHROMA_LOCK = threading.RLock()


def _fresh_chroma_client(config: Config, index_dir: Path, generation: int):
    key = str(index_dir / CHROMA_DIRNAME)
    if config.index.chroma_host:
        return _chroma_client(config, index_dir)
    with _CHROMA_LOCK:
        known = _CHROMA_GENERATION.get(key, generation)
        if generation < known:
            # A reader that read its manifest before this process saw (or wrote) a newer generation:
            # the cached system is the newer one, keep it. Unless the index was rebuilt since and
            # generations started again: then the disk is behind what we know, and the cache is stale.
            try:
                on_disk = int((read_manifest(index_dir) or {}).get("generation", 0))
            except KnowledgeBaseError:
                on_disk = known  # being rewritten: keep what is loaded
            if on_disk >= known:
                return _chroma_client(config, index_dir)
        if generation != known:
            _forget_chroma_system(index_dir, stop=False)
        _CHROMA_GENERATION[key] = generation
        return _chroma_client(config, index_dir)


def _collection_kwargs() -> dict[str, Any]:
    # cosine space: MiniLM vectors are compared by cosine (the reference used inner product of
    # normalized vectors, the same ranking); no embedding function: vectors always come from us.
    return {"metadata": {"hnsw:space": "cosine"}, "embedding_function": None}


def _vector_store(collection) -> "ChromaVectorStore":
    """LlamaIndex's ChromaVectorStore whose `add` respects the server's maximum batch size
    (LlamaIndex cuts at 41665 nodes; an embedded Chroma accepts about 5461 per call)."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    class BatchedChromaVectorStore(ChromaVectorStore):
        def add(self, nodes, **add_kwargs):
            try:
                limit = int(self._collection._client.get_max_batch_size())
            except Exception:  # older clients: a size every Chroma accepts
                limit = 5000
            ids = []
            for start in range(0, len(nodes), limit):
                ids.extend(super().add(nodes[start : start + limit], **add_kwargs))
            return ids

    return BatchedChromaVectorStore(chroma_collection=collection)


def _load_docstore(path: Path):
    from llama_index.core.storage.docstore import SimpleDocumentStore

    if not path.is_file():
        return SimpleDocumentStore()
    return SimpleDocumentStore.from_persist_path(str(path))


def _persist_docstore(store, path: Path) -> None:
    """SimpleDocumentStore.persist writes in place; write to a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        store.persist(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def node_fingerprint(node_ids: Iterable[str]) -> str:
    """Identifies a set of nodes; BM25 built from another set is stale."""
    ids = sorted(node_ids)
    return _digest(str(len(ids)), *ids, length=24)


def _stemmer(language: str | None):
    import Stemmer

    return Stemmer.Stemmer(language) if language else None


def build_bm25(nodes: Sequence["BaseNode"], config: Config, *, show_progress: bool = False) -> "LlamaBM25Retriever":
    """LlamaIndex's bm25s retriever over `nodes` (English stopwords, `retrieve.bm25_stemmer`)."""
    from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever

    if not nodes:
        raise KnowledgeBaseError("cannot build BM25 over an empty knowledge base; ingest something first")
    stemmer = _stemmer(config.retrieve.bm25_stemmer)
    with _quiet_bm25():
        return LlamaBM25Retriever(
            nodes=list(nodes),
            stemmer=stemmer,
            skip_stemming=stemmer is None,
            similarity_top_k=min(config.retrieve.candidates, len(nodes)),
            verbose=show_progress,
        )


class _quiet_bm25:
    """The BM25 wrapper warns about k > corpus size in tiny corpora (we clamp k ourselves) and
    bm25s logs every index build at DEBUG; neither is news to the user."""

    def __enter__(self):
        self._loggers = [logging.getLogger("llama_index.retrievers.bm25.base"), logging.getLogger("bm25s")]
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in zip(self._loggers, self._levels):
            logger.setLevel(level)


def _persist_bm25(retriever: "LlamaBM25Retriever", target: Path, fingerprint: str, stemmer: str | None, *, show_progress: bool = False) -> None:
    """Write the BM25 folder beside Chroma: build in a temporary folder, then swap it in."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    retriever.persist(str(tmp), show_progress=show_progress)
    write_json(tmp / BM25_META_NAME, {"fingerprint": fingerprint, "stemmer": stemmer, "n": len(retriever.corpus)})
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


def read_manifest(index_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of an index folder; None when the folder holds no index at all; raises
    KnowledgeBaseError (naming the folder and --rebuild) when it is damaged or incompatible."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST_NAME
    fix = f"rebuild it: python -m pipeline.index --config ... --rebuild (or delete {index_dir})"
    if not path.is_file():
        leftovers = [p.name for p in index_dir.iterdir() if not p.name.startswith(".")] if index_dir.is_dir() else []
        if leftovers:
            raise KnowledgeBaseError(f"index folder {index_dir} has no {MANIFEST_NAME} but holds {', '.join(sorted(leftovers)[:5])}: it is damaged or was not written by ragft; {fix}")
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KnowledgeBaseError(f"index folder {index_dir}: {MANIFEST_NAME} is unreadable ({exc.__class__.__name__}); the index is damaged; {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise KnowledgeBaseError(f"index folder {index_dir} has format {found!r}, this version reads {INDEX_FORMAT!r}; {fix}")
    return manifest


def _remove_debris(index_dir: Path) -> None:
    """Delete the temporary files and folders (`.<name>.<hex>.tmp` / `.old`) that a killed writer
    left before it could rename them; only called while holding the writer lock."""
    for child in index_dir.glob(".*.*.tmp"):
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    for child in index_dir.glob(".*.*.old"):
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _write_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(index_dir / MANIFEST_NAME, manifest)


# --------------------------------------------------------------------------------------------
# ingestion
# --------------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    index_dir: str
    documents: int = 0
    qa_pairs: int = 0
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)
    duplicate_pairs: int = 0
    docs_added: int = 0
    docs_changed: int = 0
    docs_unchanged: int = 0
    docs_removed: int = 0
    nodes_added: int = 0
    nodes_unchanged: int = 0
    nodes_removed: int = 0
    nodes_total: int = 0
    bm25_rebuilt: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.documents} documents ({self.qa_pairs} QA pairs, {self.files} files"
            + (f", {len(self.skipped_files)} skipped" if self.skipped_files else "")
            + f"); nodes: {self.nodes_added} added, {self.nodes_unchanged} unchanged, {self.nodes_removed} removed, {self.nodes_total} in the index"
            + f"; BM25 {'rebuilt' if self.bm25_rebuilt else 'up to date'}; {self.seconds:.1f} s -> {self.index_dir}"
        )


def _embedder_facts(config: Config, embed_model: "BaseEmbedding | None", previous: dict[str, Any] | None) -> dict[str, Any]:
    embed_class = type(embed_model).__name__ if embed_model is not None else (previous or {}).get("embed_class")
    return {"embed_model": config.index.embed_model, "embed_backend": config.index.backend, "embed_class": embed_class}


def check_embedder(manifest: dict[str, Any], config: Config, index_dir: Path | str) -> None:
    """The index must be queried with the embedder it was built with: the same model and the same
    inference backend (int8 vectors are close to fp32 ones, cos ~0.994, not equal)."""
    built = manifest.get("embed_model")
    if built and built != config.index.embed_model:
        raise KnowledgeBaseError(
            f"index {index_dir} was built with embedder {built!r} but the config asks for {config.index.embed_model!r}; "
            f"set index.embed_model={built} or rebuild the index: python -m pipeline.index --config ... --rebuild"
        )
    backend = manifest.get("embed_backend", "torch")  # indexes written before the key existed were torch
    if backend != config.index.backend:
        raise KnowledgeBaseError(
            f"index {index_dir} was embedded with index.backend={backend} but the config asks for index.backend={config.index.backend}; "
            f"set index.backend={backend} or rebuild the index: python -m pipeline.index --config ... --set index.backend={config.index.backend} --rebuild"
        )


def remove_index(config: Config) -> None:
    """Delete an index: the folder, and the collection on a Chroma server."""
    index_dir = Path(config.index.dir)
    if config.index.chroma_host:
        client = _chroma_client(config, index_dir)
        try:
            client.delete_collection(config.index.collection)
        except Exception:  # not there: nothing to delete
            pass
    else:
        _forget_chroma_system(index_dir)
        _CHROMA_GENERATION.pop(str(index_dir / CHROMA_DIRNAME), None)
    if index_dir.exists():
        with WriterLock(index_dir):
            for child in index_dir.iterdir():
                if child.name in (LOCK_NAME, LOCK_INFO_NAME):
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def ingest(
    config: Config,
    *,
    sources: Sequence[str] | None = None,
    rebuild: bool = False,
    embed_model: "BaseEmbedding | None" = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> IngestReport:
    """Bring `config.index.dir` in line with the QA splits and document sources; see the module doc.

    `sources` defaults to `config.index.sources`. `embed_model` defaults to `load_embedder(config)`
    (tests pass a counting one)."""
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from tqdm.auto import tqdm

    started = time.perf_counter()
    index_dir = Path(config.index.dir)
    sources = list(config.index.sources if sources is None else sources)
    # Every input is read and checked before anything is written or deleted: a bad data file or a
    # missing embedder must neither cost the existing index (--rebuild) nor leave a half-made one.
    report = IngestReport(index_dir=str(index_dir))
    documents, report.duplicate_pairs = qa_documents(config)
    report.qa_pairs = len(documents)
    if sources:
        file_docs, report.skipped_files = read_sources(sources, show_progress=show_progress, warn=warn)
        report.files = len(file_docs)
        documents.extend(file_docs)
    report.documents = len(documents)
    if not documents:
        raise SourceError(
            f"nothing to ingest: data.knowledge_splits={config.data.knowledge_splits} in {config.data.dir} and the sources {sources} hold no documents"
        )
    if embed_model is None:
        from pipeline.models import ModelNotFoundError, resolve_model

        try:
            resolve_model(config.index.embed_model)  # only finds the folder; loading waits until something needs embedding
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"index.embed_model: {exc}") from None
    if rebuild:
        remove_index(config)
    manifest = read_manifest(index_dir)  # damaged/incompatible -> clear error before any work
    if manifest is not None:
        check_embedder(manifest, config, index_dir)

    with WriterLock(index_dir):
        _remove_debris(index_dir)
        generation = int(manifest.get("generation", 0)) if manifest else 0
        manifest = {
            "format": INDEX_FORMAT,
            "state": "ingesting",
            "generation": generation,
            "collection": config.index.collection,
            "chroma": f"{config.index.chroma_host}:{config.index.chroma_port}" if config.index.chroma_host else CHROMA_DIRNAME,
            **_embedder_facts(config, embed_model, manifest),
            **({k: manifest[k] for k in ("counts", "fingerprint", "embed_dim") if k in manifest} if manifest else {}),
        }
        _write_manifest(index_dir, manifest)
        save_resolved_config(config, index_dir, extra={"kind": "knowledge-base", "state": "ingesting", "embed_model": config.index.embed_model})

        client = _fresh_chroma_client(config, index_dir, generation)
        try:
            collection = client.get_or_create_collection(config.index.collection, **_collection_kwargs())
            docstore = _load_docstore(index_dir / DOCSTORE_NAME)
            nodestore = _load_docstore(index_dir / NODESTORE_NAME)
        except Exception as exc:  # sqlite/json/pydantic errors all mean the same thing here
            raise KnowledgeBaseError(
                f"index folder {index_dir} is damaged ({exc.__class__.__name__}: {str(exc)[:200]}); "
                "rebuild it: python -m pipeline.index --config ... --rebuild"
            ) from None
        vector_store = _vector_store(collection)

        # which documents are new, changed, unchanged, gone (the docstore keeps their hashes)
        existing = docstore.get_all_document_hashes()  # hash -> doc id
        existing_by_id = {doc_id: h for h, doc_id in existing.items()}
        wanted = {doc.id_: doc for doc in documents}
        to_run, changed_ids = [], []
        for doc in documents:
            old_hash = existing_by_id.get(doc.id_)
            if old_hash is None:
                to_run.append(doc)
            elif old_hash != doc.hash:
                to_run.append(doc)
                changed_ids.append(doc.id_)
            else:
                report.docs_unchanged += 1
        removed_ids = [doc_id for doc_id in existing_by_id if doc_id not in wanted]
        report.docs_changed, report.docs_removed = len(changed_ids), len(removed_ids)
        report.docs_added = len(to_run) - len(changed_ids)

        for doc_id in tqdm([*changed_ids, *removed_ids], desc="removing", unit="doc", disable=not show_progress or not (changed_ids or removed_ids)):
            info = nodestore.get_ref_doc_info(doc_id)
            report.nodes_removed += len(info.node_ids) if info else 0
            vector_store.delete(doc_id)
            nodestore.delete_ref_doc(doc_id, raise_error=False)
            docstore.delete_document(doc_id, raise_error=False)
        if changed_ids or removed_ids:
            _persist_docstore(nodestore, index_dir / NODESTORE_NAME)
            _persist_docstore(docstore, index_dir / DOCSTORE_NAME)

        if to_run and embed_model is None:
            from pipeline.models import load_embedder

            embed_model = load_embedder(config)
        if embed_model is not None:
            manifest["embed_class"] = type(embed_model).__name__
        splitter = _structure_splitter_cls()(chunk_size=config.index.chunk_size, chunk_overlap=config.index.chunk_overlap)
        pipeline = IngestionPipeline(
            transformations=[splitter, embed_model] if embed_model is not None else [splitter],
            vector_store=vector_store,
            docstore=docstore,
            docstore_strategy=DocstoreStrategy.UPSERTS,
            disable_cache=True,  # the docstore is the memory of what was done; a cache would duplicate every vector
        )
        step = config.index.checkpoint_every
        with tqdm(total=len(to_run), desc="embedding + writing", unit="doc", disable=not show_progress or not to_run) as bar:
            for start in range(0, len(to_run), step):
                batch = to_run[start : start + step]
                nodes = pipeline.run(documents=batch, show_progress=False)
                if nodes and "embed_dim" not in manifest:
                    manifest["embed_dim"] = len(nodes[0].embedding)
                nodestore.add_documents([_without_embedding(n) for n in nodes], allow_update=True)
                report.nodes_added += len(nodes)
                # nodes first: a doc the docstore calls done always has its nodes for BM25
                _persist_docstore(nodestore, index_dir / NODESTORE_NAME)
                _persist_docstore(docstore, index_dir / DOCSTORE_NAME)
                bar.update(len(batch))

        node_ids = list(nodestore.docs.keys())
        report.nodes_total = len(node_ids)
        report.nodes_unchanged = report.nodes_total - report.nodes_added
        fingerprint = node_fingerprint(node_ids)
        bm25_dir = index_dir / BM25_DIRNAME
        if _bm25_fingerprint(bm25_dir) != fingerprint:
            if show_progress:
                log(f"BM25: indexing {report.nodes_total} nodes")
            _persist_bm25(build_bm25(list(nodestore.docs.values()), config, show_progress=show_progress), bm25_dir, fingerprint, config.retrieve.bm25_stemmer, show_progress=show_progress)
            report.bm25_rebuilt = True

        report.seconds = round(time.perf_counter() - started, 2)
        changed = bool(to_run or removed_ids or report.bm25_rebuilt)
        manifest.update(
            {
                "state": "complete",
                "generation": generation + (1 if changed else 0),
                "fingerprint": fingerprint,
                "counts": {"documents": report.documents, "nodes": report.nodes_total, "chroma": collection.count()},
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        _write_manifest(index_dir, manifest)
        _CHROMA_GENERATION[str(index_dir / CHROMA_DIRNAME)] = manifest["generation"]  # we wrote it: our system is current
        save_resolved_config(config, index_dir, extra={"kind": "knowledge-base", "state": "complete", "embed_model": config.index.embed_model, "report": asdict(report)})
    log(report.summary())
    return report


def _without_embedding(node: "BaseNode") -> "BaseNode":
    copy = node.model_copy()
    copy.embedding = None
    return copy


def _bm25_fingerprint(bm25_dir: Path) -> str | None:
    try:
        return json.loads((bm25_dir / BM25_META_NAME).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# the reading side: a knowledge base object that loads its stores once
# --------------------------------------------------------------------------------------------


class KnowledgeBase:
    """The stores of one index: Chroma collection, BM25, nodes, embedder. Loaded lazily, once.

    Readers never take the writer's lock. `refresh_if_changed()` (cheap: one stat and a small
    JSON read) reloads the stores when an ingestion finished since they were loaded; retrievers
    call it before each query. Build one with `open_index(config)` (a persisted index) or
    `KnowledgeBase.from_nodes(config, nodes)` (in memory, for evaluation and benchmarks).

    Thread-safe: one base serves many querying threads (the UI, benchmarks) while another thread
    may reload it. Stores load under a lock, each once, and every property returns the store it
    loaded or found, never the attribute again (a concurrent reload may have reset it meanwhile)."""

    def __init__(self, config: Config, *, embed_model: "BaseEmbedding | None" = None, _in_memory: dict[str, Any] | None = None):
        self.config = config
        self.index_dir = Path(config.index.dir)
        self._embed_model = embed_model
        self._in_memory = _in_memory
        self._vector_store = None
        self._bm25 = None
        self._nodes = None
        self._manifest: dict[str, Any] | None = None
        self._manifest_stamp: tuple[float, int] | None = None
        self._size: int | None = None
        self._lock = threading.RLock()

    # ---- construction ----

    @classmethod
    def open(cls, config: Config, *, embed_model: "BaseEmbedding | None" = None) -> "KnowledgeBase":
        kb = cls(config, embed_model=embed_model)
        kb.manifest  # fail now, with a clear message, if there is no usable index
        return kb

    @classmethod
    def from_nodes(
        cls,
        config: Config,
        nodes: Sequence["BaseNode"],
        *,
        embed_model: "BaseEmbedding | None" = None,
        embeddings: Sequence[Sequence[float]] | None = None,
        with_vectors: bool = True,
        show_progress: bool = False,
    ) -> "KnowledgeBase":
        """An in-memory knowledge base (ephemeral Chroma collection + BM25) over `nodes`, queried by
        the very same retriever classes as a persisted index. Pass `embeddings` to skip embedding,
        `with_vectors=False` for a BM25-only base (no embedder loaded, dense search unavailable)."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        if not nodes:
            raise KnowledgeBaseError("from_nodes needs at least one node")
        kb = cls(config, embed_model=embed_model, _in_memory={})
        copies = [n.model_copy() for n in nodes]
        kb._manifest = {"format": INDEX_FORMAT, "state": "complete", "generation": 0, "embed_model": config.index.embed_model, "embed_backend": config.index.backend, "in_memory": True}
        if not with_vectors:
            kb._nodes = {n.node_id: n for n in copies}
            kb._size = len(copies)
            return kb
        if embeddings is None:
            texts = [n.get_content(metadata_mode=_embed_mode()) for n in copies]
            embeddings = kb.embed_model.get_text_embedding_batch(texts, show_progress=show_progress)
        for node, vector in zip(copies, embeddings):
            node.embedding = list(map(float, vector))
        client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
        # ephemeral clients in one process share one system: a unique name keeps bases apart
        collection = client.create_collection(f"kb-{uuid.uuid4().hex}", **_collection_kwargs())
        kb._vector_store = _vector_store(collection)
        kb._vector_store.add(copies)
        kb._nodes = {n.node_id: _without_embedding(n) for n in copies}
        kb._size = len(kb._nodes)
        return kb

    # ---- lazily loaded parts ----

    @property
    def manifest(self) -> dict[str, Any]:
        manifest = self._manifest
        if manifest is None:
            with self._lock:
                if self._manifest is None:
                    stamp = self._stamp()  # before reading: a newer file is then seen by the next refresh
                    loaded = read_manifest(self.index_dir)
                    if loaded is None:
                        raise KnowledgeBaseError(f"no index at {self.index_dir}; build it first: python -m pipeline.index --config {self.config.profile}")
                    check_embedder(loaded, self.config, self.index_dir)
                    if loaded.get("state") != "complete":
                        warnings.warn(f"index {self.index_dir} is being written or its last ingestion was interrupted; re-run python -m pipeline.index to complete it", stacklevel=2)
                    self._manifest, self._manifest_stamp = loaded, stamp
                manifest = self._manifest
        return manifest

    @property
    def embed_model(self) -> "BaseEmbedding":
        if self._embed_model is None:
            from pipeline.models import load_embedder

            self._embed_model = load_embedder(self.config)
        return self._embed_model

    @property
    def vector_store(self) -> "ChromaVectorStore":
        store = self._vector_store
        if store is None:
            if self._in_memory is not None:
                raise KnowledgeBaseError("this in-memory knowledge base was built with with_vectors=False: it has no dense store")
            with self._lock:
                if self._vector_store is None:
                    client = _fresh_chroma_client(self.config, self.index_dir, int(self.manifest.get("generation", 0)))
                    try:
                        collection = client.get_collection(self.config.index.collection)
                    except Exception as exc:
                        raise KnowledgeBaseError(
                            f"index {self.index_dir}: Chroma collection {self.config.index.collection!r} is missing or unreadable ({exc.__class__.__name__}); "
                            "rebuild it: python -m pipeline.index --config ... --rebuild"
                        ) from None
                    self._vector_store = _vector_store(collection)
                store = self._vector_store
        return store

    @property
    def nodes(self) -> dict[str, "BaseNode"]:
        """node id -> node (text and metadata, no vector)."""
        nodes = self._nodes
        if nodes is None:
            with self._lock:
                if self._nodes is None:
                    self.manifest
                    path = self.index_dir / NODESTORE_NAME
                    try:
                        store = _load_docstore(path)
                    except Exception as exc:
                        raise KnowledgeBaseError(f"index {self.index_dir}: {NODESTORE_NAME} is damaged ({exc.__class__.__name__}); rebuild it: python -m pipeline.index --config ... --rebuild") from None
                    self._nodes = dict(store.docs)
                nodes = self._nodes
        return nodes

    @property
    def bm25(self) -> "LlamaBM25Retriever":
        """LlamaIndex's bm25s retriever: loaded from disk, or rebuilt in memory from the nodes
        when the persisted one is missing or stale (a reader never writes the index)."""
        bm25 = self._bm25
        if bm25 is None:
            with self._lock:
                if self._bm25 is None:
                    self._bm25 = self._load_bm25()
                bm25 = self._bm25
        return bm25

    def _load_bm25(self) -> "LlamaBM25Retriever":
        if self._in_memory is not None:
            return build_bm25(list(self.nodes.values()), self.config)
        bm25_dir = self.index_dir / BM25_DIRNAME
        wanted = self.manifest.get("fingerprint")
        if wanted and _bm25_fingerprint(bm25_dir) == wanted:
            from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever

            try:
                with _quiet_bm25():
                    retriever = LlamaBM25Retriever.from_persist_dir(str(bm25_dir))
                # the persisted args do not carry the stemmer: set it from the config
                stemmer = _stemmer(self.config.retrieve.bm25_stemmer)
                retriever.stemmer, retriever.skip_stemming = stemmer, stemmer is None
                return retriever
            except Exception as exc:
                logger.warning("BM25 index in %s unreadable (%s); rebuilding it in memory", bm25_dir, exc)
        elif wanted:
            logger.warning("BM25 index in %s is stale or missing; rebuilt in memory (run pipeline.index to persist it)", bm25_dir)
        return build_bm25(list(self.nodes.values()), self.config)

    @property
    def size(self) -> int:
        """Vectors in the Chroma collection (counted once per load)."""
        size = self._size
        if size is None:
            with self._lock:
                if self._size is None:
                    self._size = self.vector_store._collection.count()
                size = self._size
        return size

    # ---- maintenance ----

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = (self.index_dir / MANIFEST_NAME).stat()
            return (st.st_mtime, st.st_size)
        except OSError:
            return None

    def reload(self) -> None:
        """Forget every loaded store; the next use loads them again from the index folder."""
        if self._in_memory is not None:
            return
        with self._lock:
            self._vector_store = self._bm25 = self._nodes = self._manifest = None
            self._manifest_stamp = self._size = None

    def refresh_if_changed(self) -> bool:
        """Reload when an ingestion has finished since the stores were loaded; True if reloaded."""
        # a snapshot: other threads may reload (reset these) while this one looks
        loaded, loaded_stamp = self._manifest, self._manifest_stamp
        if self._in_memory is not None or loaded is None:
            return False
        stamp = self._stamp()
        if stamp == loaded_stamp:
            return False
        try:
            fresh = read_manifest(self.index_dir)
        except KnowledgeBaseError:
            return False  # being rewritten right now: keep serving what is loaded
        if fresh and (fresh.get("generation"), fresh.get("state")) == (loaded.get("generation"), loaded.get("state")):
            with self._lock:
                if self._manifest is loaded:
                    self._manifest_stamp = stamp
            return False
        if fresh and fresh.get("state") != "complete":
            return False  # an ingestion is running: reload when it has finished
        with self._lock:
            if self._manifest is not loaded:
                return False  # another thread reloaded meanwhile
            self.reload()
        return True

    def close(self) -> None:
        """Free an in-memory base's Chroma collection (ephemeral clients share one process-wide
        system, so collections would otherwise live until the process ends)."""
        if self._in_memory is not None and self._vector_store is not None:
            collection = self._vector_store._collection
            try:
                collection._client.delete_collection(collection.name)
            except Exception:  # already gone
                pass
            self._vector_store = None

    def counts(self) -> dict[str, int]:
        """How many nodes each store holds (they agree after a complete ingestion)."""
        return {"chroma": self.vector_store._collection.count(), "bm25": len(self.bm25.corpus), "nodes": len(self.nodes)}

    def get_node(self, node_id: str) -> "BaseNode":
        return self.nodes[node_id]


def _embed_mode():
    from llama_index.core.schema import MetadataMode

    return MetadataMode.EMBED


def finetuned_embedder_config(config: Config, *, check: bool = True) -> Config:
    """The config of the index that `full` searches when index.finetuned_embedder is on: embedded
    with the fine-tuned embedder (finetune.embedder.output) through index.finetuned_backend (null:
    index.backend) and kept at index.finetuned_dir, every other setting as in `config`. `check`: refuse when the embedder has not been trained yet."""
    from pipeline.config import ConfigError, config_from_dict

    path = Path(config.finetune.embedder.output)
    if check and not (path / "config.json").is_file():
        raise ConfigError(
            f"the fine-tuned embedder finetune.embedder.output={path} does not exist; train it first: "
            f"python -m finetune.embedder --config {config.profile} (eval.compare builds it for the systems that need it), "
            f"or point finetune.embedder.output at one"
        )
    raw = config.to_dict()
    raw["index"].update(embed_model=str(path), dir=config.index.finetuned_dir, backend=config.index.finetuned_backend or config.index.backend)
    return config_from_dict(raw)


def open_index(config: Config, *, embed_model: "BaseEmbedding | None" = None) -> KnowledgeBase:
    """The knowledge base of `config.index.dir` (stores load lazily; never takes the lock).
    Raises KnowledgeBaseError when there is no index, it is damaged, or was built with another
    embedder than `config.index.embed_model`."""
    return KnowledgeBase.open(config, embed_model=embed_model)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.index",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].split("Python API")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", action="append", default=[], metavar="PATH", help="A document file or folder (.md, .txt, .pdf, .html) to ingest besides the QA pairs; repeatable; added to index.sources of the profile. The index mirrors the sources of this run: documents ingested before but not named now are removed.")
    parser.add_argument("--rebuild", action="store_true", help="Delete the index (folder, and the collection on a Chroma server) and ingest from scratch. Use it when the index is damaged or was built by another version or embedder.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars; only the summary line.")
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> None:
        extra = []
        if args.source:
            base = load_config(args.config, args.overrides).index.sources if not args.help_config else []
            extra.append(f"index.sources={json.dumps([*base, *args.source])}")
        config = config_from_args(args, extra)
        ingest(config, rebuild=args.rebuild, show_progress=not args.quiet, warn=lambda m: print(f"warning: {m}", file=sys.stderr))

    return run_cli(body)

if __name__ == "__main__":
    raise SystemExit(main())
