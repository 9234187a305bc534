"""Knowledge base: idempotent ingestion of question/answer pairs and documents into Chroma + BM25.

    python -m pipeline.index --config tiny --source docs/     # what goes in, the folder's layout: --help

One module per role (each imports only those above it, and the pipeline core below them):

    store.py           the index folder: file names, manifest, embedder check, Chroma client and
                       collection, the JSON docstores, the fine-tuned embedder's index config
    lock.py            the single writer's file lock (readers never take it)
    bm25.py            BM25 over the nodes: build, persist beside Chroma, fingerprint
    documents.py       what goes in: QA pairs and document files as Documents, the splitter
    ingestion.py       the write side: idempotent, resumable ingestion into one index folder, and
                       the same inputs into every index the systems search (the fine-tuned one too)
    knowledge_base.py  the read side: KnowledgeBase (lazy stores, reloads after an ingestion)
    cli.py             `python -m pipeline.index` (__main__.py runs it)

Python API (the retrieval side lives in `pipeline.retrieve`):

    from pipeline.index import ingest, ingest_all_indexes, open_index
    report = ingest(config)                     # IngestReport: documents, added, unchanged, removed, ...
    reports = ingest_all_indexes(config)        # the same into every index the systems search (+ the fine-tuned one)
    kb = open_index(config)                     # KnowledgeBase: lazy stores, never takes the lock
    kb.counts()                                 # {"chroma": n, "bm25": n, "nodes": n}
"""

from __future__ import annotations

from pipeline.index.bm25 import BM25_DIRNAME, BM25_META_NAME, build_bm25, node_fingerprint
from pipeline.index.cli import build_parser, main
from pipeline.index.documents import (
    DOC_METADATA_KEYS,
    DOCUMENT_SUFFIXES,
    QA_METADATA_KEYS,
    SourceError,
    qa_documents,
    qa_node_id,
    qa_nodes,
    qa_text,
    read_document,
    read_sources,
    source_files,
)
from pipeline.index.ingestion import IngestReport, indexed_sources, ingest, ingest_all_indexes, ingest_finetuned_index, remove_index
from pipeline.index.ingestion import _embedder_facts as _embedder_facts  # re-exported: tests/pipeline/test_int8.py
from pipeline.index.knowledge_base import KnowledgeBase, open_index
from pipeline.index.lock import LOCK_INFO_NAME, LOCK_NAME, IndexLockedError, WriterLock
from pipeline.index.store import (
    CHROMA_DIRNAME,
    DOCSTORE_NAME,
    INDEX_FORMAT,
    MANIFEST_NAME,
    NODESTORE_NAME,
    KnowledgeBaseError,
    check_embedder,
    finetuned_embedder_config,
    read_manifest,
)

__all__ = [
    "BM25_DIRNAME",
    "BM25_META_NAME",
    "CHROMA_DIRNAME",
    "DOCSTORE_NAME",
    "DOCUMENT_SUFFIXES",
    "DOC_METADATA_KEYS",
    "INDEX_FORMAT",
    "IndexLockedError",
    "IngestReport",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "LOCK_INFO_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "NODESTORE_NAME",
    "QA_METADATA_KEYS",
    "SourceError",
    "WriterLock",
    "build_bm25",
    "build_parser",
    "check_embedder",
    "finetuned_embedder_config",
    "indexed_sources",
    "ingest",
    "ingest_all_indexes",
    "ingest_finetuned_index",
    "main",
    "node_fingerprint",
    "open_index",
    "qa_documents",
    "qa_node_id",
    "qa_nodes",
    "qa_text",
    "read_document",
    "read_manifest",
    "read_sources",
    "remove_index",
    "source_files",
]
