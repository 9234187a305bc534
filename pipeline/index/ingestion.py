"""The write side: idempotent ingestion of the QA pairs and documents into an index folder (Chroma,
nodes.json, docstore.json, BM25), in checkpoints, under the single writer's lock (`ingest`); the
same inputs into every index the config's systems search (`ingest_all_indexes`: index.dir and the
fine-tuned embedder's index.finetuned_dir), and the latter's build by eval.compare
(`ingest_finetuned_index`).

What goes in, the folder's layout and why it has this shape: `pipeline.index.cli`
(`python -m pipeline.index --help`)."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pipeline import encoders, models
from pipeline.config import Config, read_resolved_config, save_resolved_config
from pipeline.index.bm25 import BM25_DIRNAME, _bm25_fingerprint, _persist_bm25, build_bm25, node_fingerprint
from pipeline.index.documents import SourceError, _structure_splitter_cls, qa_documents, read_sources
from pipeline.index.lock import LOCK_INFO_NAME, LOCK_NAME, WriterLock
from pipeline.index.store import (
    _CHROMA_GENERATION,
    CHROMA_DIRNAME,
    DOCSTORE_NAME,
    INDEX_FORMAT,
    MANIFEST_NAME,
    NODESTORE_NAME,
    KnowledgeBaseError,
    _chroma_client,
    _collection_kwargs,
    _forget_chroma_system,
    _fresh_chroma_client,
    _load_docstore,
    _persist_docstore,
    _remove_debris,
    _vector_store,
    _without_embedding,
    _write_manifest,
    check_embedder,
    finetuned_embedder_config,
    read_manifest,
)

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding


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


def _chunking(config: Config) -> list[Any]:
    """What a document's nodes depend on besides its text, as the manifest records it; the heading
    flag only when set, so indexes from before it keep their record."""
    return [config.index.chunk_size, config.index.chunk_overlap, *(["headings"] if config.index.embed_headings else [])]


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
    """Bring `config.index.dir` in line with the QA splits and document sources; see `pipeline.index.cli`.

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
        try:
            models.resolve_model(config.index.embed_model)  # only finds the folder; loading waits until something needs embedding
        except models.ModelNotFoundError as exc:
            raise models.ModelNotFoundError(f"index.embed_model: {exc}") from None
    if rebuild:
        remove_index(config)
    manifest = read_manifest(index_dir)  # damaged/incompatible -> clear error before any work
    if manifest is not None:
        check_embedder(manifest, config, index_dir)
    # the chunk settings the existing nodes were split with: the manifest's, or (an index from before
    # they were recorded there) those of the config it saved; unknown -> assume unchanged
    previous_chunking = (manifest or {}).get("chunking")
    if manifest is not None and previous_chunking is None:
        try:
            saved, _ = read_resolved_config(index_dir)
            previous_chunking = [saved.index.chunk_size, saved.index.chunk_overlap]  # before embed_headings existed
        except Exception:  # no or an unreadable saved config: nothing to compare with
            previous_chunking = None

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
            **({k: manifest[k] for k in ("counts", "fingerprint", "embed_dim", "sources", "chunking") if k in manifest} if manifest else {}),
        }
        # a document's hash is its text: new chunk settings must still re-split (and re-embed) every document
        chunking = _chunking(config)
        rechunk = previous_chunking is not None and list(previous_chunking) != chunking
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
            elif old_hash != doc.hash or rechunk:
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
        manifest["chunking"] = chunking  # the old nodes are gone: what is added from here on, and after a crash, is split this way
        _write_manifest(index_dir, manifest)

        if to_run and embed_model is None:
            embed_model = encoders.load_embedder(config)
        if embed_model is not None:
            manifest["embed_class"] = type(embed_model).__name__
        splitter = _structure_splitter_cls()(chunk_size=config.index.chunk_size, chunk_overlap=config.index.chunk_overlap, embed_headings=config.index.embed_headings)
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
        if rechunk or _bm25_fingerprint(bm25_dir) != fingerprint:  # re-split: same ids, maybe new text
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
                "sources": [str(Path(source).expanduser().resolve()) for source in sources],  # what the index mirrors now
                "chunking": chunking,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        _write_manifest(index_dir, manifest)
        _CHROMA_GENERATION[str(index_dir / CHROMA_DIRNAME)] = manifest["generation"]  # we wrote it: our system is current
        save_resolved_config(config, index_dir, extra={"kind": "knowledge-base", "state": "complete", "embed_model": config.index.embed_model, "report": asdict(report)})
    log(report.summary())
    return report


# --------------------------------------------------------------------------------------------
# every index the systems search
# --------------------------------------------------------------------------------------------


def _finetuned_target(config: Config, log: Callable[[str], None]) -> Config | None:
    """The config of the fine-tuned embedder's index when the systems search it (index.finetuned_embedder)
    and it can be written: the embedder has been trained, or the index exists (it must then be
    kept in step). None otherwise, saying so through `log` when only the embedder is missing."""
    if not config.index.finetuned_embedder:
        return None
    target = finetuned_embedder_config(config, check=False)
    embedder = Path(config.finetune.embedder.output)
    if (embedder / "config.json").is_file() or (Path(target.index.dir) / MANIFEST_NAME).is_file():
        return target
    log(
        f"index.finetuned_embedder is on but the fine-tuned embedder {embedder} does not exist yet, so the index `full` searches "
        f"({target.index.dir}) was not written; eval.compare ingests these documents into it when it builds it "
        f"(python -m eval.compare --config {config.profile})"
    )
    return None


def ingest_all_indexes(
    config: Config,
    *,
    sources: Sequence[str] | None = None,
    rebuild: bool = False,
    embedder_for: Callable[[Config], "BaseEmbedding | None"] | None = None,
    ingest_fn: Callable[..., IngestReport] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> list[IngestReport]:
    """Bring every index the config's systems search in line with the QA splits and `sources`
    (default: index.sources): index.dir always, and index.finetuned_dir (the fine-tuned embedder's,
    which `full` searches) when index.finetuned_embedder is on and that embedder has been trained
    or its index built. Each index gets the same inputs through `ingest`, embedded by its own
    embedder, so each mirrors them: a document added, changed or removed is added, re-embedded or
    removed in both; a re-run adds nothing. Returns the reports, the base index's first.

    When the fine-tuned embedder does not exist yet, only index.dir is written and `log` says so;
    eval.compare's build later fills the fine-tuned index with the base index's documents
    (`ingest_finetuned_index`). `embedder_for(target_config)` gives each index's embedder
    (default: load_embedder of that config); `ingest_fn` replaces `ingest` (the chat app's tests)."""
    ingest_fn = ingest_fn or ingest
    sources = list(config.index.sources if sources is None else sources)
    targets = [config]
    finetuned = _finetuned_target(config, log)
    if finetuned is not None:
        targets.append(finetuned)
    reports = []
    for target in targets:
        embed_model = embedder_for(target) if embedder_for is not None else None
        reports.append(ingest_fn(target, sources=sources, rebuild=rebuild, embed_model=embed_model, show_progress=show_progress, log=log, warn=warn))
    return reports


def indexed_sources(config: Config, *, warn: Callable[[str], None] | None = None) -> list[str]:
    """The document sources index.dir mirrors: those of its last complete ingestion (the manifest
    records them, with `--source` and the chat app's uploads), index.sources when it records none.
    A recorded source that is gone is left out, with a warning."""
    try:
        manifest = read_manifest(config.index.dir)
    except KnowledgeBaseError:
        manifest = None
    if not manifest or "sources" not in manifest:
        return list(config.index.sources)
    kept = []
    for source in manifest["sources"]:
        if Path(source).exists():
            kept.append(source)
        elif warn is not None:
            warn(f"{source}, a document source of {config.index.dir}, no longer exists: left out of the fine-tuned embedder's index")
    return kept


def ingest_finetuned_index(
    config: Config,
    *,
    rebuild: bool = False,
    embed_model: "BaseEmbedding | None" = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> IngestReport:
    """Build or update the fine-tuned embedder's index (index.finetuned_dir) with the documents
    index.dir holds (`indexed_sources`), so documents added by `python -m pipeline.index --source`
    or the chat app before the embedder was trained reach it too. eval.compare's build calls it
    once the embedder exists; raises ConfigError when it does not."""
    return ingest(
        finetuned_embedder_config(config),
        sources=indexed_sources(config, warn=warn or log),
        rebuild=rebuild,
        embed_model=embed_model,
        show_progress=show_progress,
        log=log,
        warn=warn,
    )
