"""The index folder and its stores: file names, the manifest, the embedder check, the Chroma client
and collection, the JSON docstores, and the config of the fine-tuned embedder's index.

Both sides use this module: ingestion (`pipeline.index.ingestion`) writes through it, the
knowledge base (`pipeline.index.knowledge_base`) reads through it. The folder's layout is
described in `pipeline.index.cli` (`python -m pipeline.index --help`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, ConfigError, config_from_dict
from pipeline.errors import UserFacingError
from pipeline.fileio import write_json

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

INDEX_FORMAT = "ragft-index/1"
MANIFEST_NAME = "manifest.json"
DOCSTORE_NAME = "docstore.json"
NODESTORE_NAME = "nodes.json"
CHROMA_DIRNAME = "chroma"


class KnowledgeBaseError(UserFacingError, RuntimeError):
    """The index folder is missing, damaged, incompatible, or built with other settings."""


def _digest(*parts: str, length: int = 20) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:length]


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


def finetuned_embedder_config(config: Config, *, check: bool = True) -> Config:
    """The config of the index that `full` searches when index.finetuned_embedder is on: embedded
    with the fine-tuned embedder (finetune.embedder.output) through index.finetuned_backend (null:
    index.backend) and kept at index.finetuned_dir, every other setting as in `config`; on a Chroma
    server (index.chroma_host) in its own collection, `<index.collection>-finetuned`, as the two
    indexes would otherwise share one. `check`: refuse when the embedder has not been trained yet."""
    path = Path(config.finetune.embedder.output)
    if check and not (path / "config.json").is_file():
        raise ConfigError(
            f"the fine-tuned embedder finetune.embedder.output={path} does not exist; train it first: "
            f"python -m finetune.embedder --config {config.profile} (eval.compare builds it for the systems that need it), "
            f"or point finetune.embedder.output at one"
        )
    raw = config.to_dict()
    raw["index"].update(embed_model=str(path), dir=config.index.finetuned_dir, backend=config.index.finetuned_backend or config.index.backend)
    if config.index.chroma_host:  # embedded Chroma keeps each index in its own folder already
        raw["index"]["collection"] = f"{config.index.collection}-finetuned"
    return config_from_dict(raw)


# --------------------------------------------------------------------------------------------
# Chroma
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


# --------------------------------------------------------------------------------------------
# docstores (docstore.json: input documents and their hashes; nodes.json: every node, no vectors)
# --------------------------------------------------------------------------------------------


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


def _without_embedding(node: "BaseNode") -> "BaseNode":
    copy = node.model_copy()
    copy.embedding = None
    return copy
