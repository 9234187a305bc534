"""The read side: `KnowledgeBase`, the stores of one index (Chroma collection, BM25, nodes,
embedder) loaded lazily and once, reloaded when an ingestion finishes; readers never take the
writer's lock. `open_index(config)` opens a persisted index, `KnowledgeBase.from_nodes` builds one
in memory; the retrievers of `pipeline.retrieve` search either."""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline import encoders
from pipeline.config import Config
from pipeline.index.bm25 import BM25_DIRNAME, _bm25_fingerprint, _quiet_bm25, _stemmer, build_bm25
from pipeline.index.store import (
    INDEX_FORMAT,
    MANIFEST_NAME,
    NODESTORE_NAME,
    KnowledgeBaseError,
    _collection_kwargs,
    _fresh_chroma_client,
    _load_docstore,
    _vector_store,
    _without_embedding,
    check_embedder,
    read_manifest,
)

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode
    from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever
    from llama_index.vector_stores.chroma import ChromaVectorStore

logger = logging.getLogger(__name__)


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
            self._embed_model = encoders.load_embedder(self.config)
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


def open_index(config: Config, *, embed_model: "BaseEmbedding | None" = None) -> KnowledgeBase:
    """The knowledge base of `config.index.dir` (stores load lazily; never takes the lock).
    Raises KnowledgeBaseError when there is no index, it is damaged, or was built with another
    embedder than `config.index.embed_model`."""
    return KnowledgeBase.open(config, embed_model=embed_model)
