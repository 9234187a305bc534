"""BM25 over the knowledge base's nodes (LlamaIndex's bm25s retriever): built from nodes.json,
persisted to `bm25/` beside Chroma with the fingerprint of the node set it was built from, so a
stale one is noticed and rebuilt."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from pipeline.config import Config
from pipeline.fileio import write_json
from pipeline.index.store import KnowledgeBaseError, _digest

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode
    from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever

BM25_DIRNAME = "bm25"
BM25_META_NAME = "ragft_bm25.json"


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


def _bm25_fingerprint(bm25_dir: Path) -> str | None:
    try:
        return json.loads((bm25_dir / BM25_META_NAME).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        return None
