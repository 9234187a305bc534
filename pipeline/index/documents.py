"""What goes into the knowledge base: question/answer pairs and document files as LlamaIndex
Documents with content-derived ids, and the structure-aware splitter that turns them into nodes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from pipeline.config import Config
from pipeline.data import load_split
from pipeline.errors import UserFacingError
from pipeline.index.store import _digest

if TYPE_CHECKING:
    from llama_index.core.schema import Document, TextNode

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt", ".pdf", ".html", ".htm")
# Metadata is for people and later stages; it never enters prompts, and enters embeddings and BM25
# only as a document chunk's heading (index.embed_headings): a QA pair's text already holds it all.
QA_METADATA_KEYS = ["id", "question", "answer", "source", "split", "kind"]
DOC_METADATA_KEYS = ["id", "source", "file_name", "heading", "chunk", "kind"]


class SourceError(UserFacingError, ValueError):
    """A document source is empty or unusable; the message names it."""


# --------------------------------------------------------------------------------------------
# ids and nodes
# --------------------------------------------------------------------------------------------


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
        then every section (and plain text) into chunks of `chunk_size` tokens with `chunk_overlap`;
        with `embed_headings`, a chunk's heading path enters its embedding and BM25 text
        ("heading: Title / Section", LlamaIndex's EMBED metadata mode), never the prompt.
        Node ids: QA pairs keep their content id; chunks get sha256(source path, text, ordinal)."""

        chunk_size: int = 512
        chunk_overlap: int = 64
        embed_headings: bool = False

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
                                excluded_embed_metadata_keys=[k for k in DOC_METADATA_KEYS if not (self.embed_headings and heading and k == "heading")],
                                excluded_llm_metadata_keys=list(DOC_METADATA_KEYS),
                                relationships={NodeRelationship.SOURCE: doc.as_related_node_info()},
                            )
                        )
                        chunk_no += 1
            return out

    return StructureAwareSplitter
