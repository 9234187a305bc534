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

Where it goes: every index the systems search, each embedded by its own embedder: `index.dir`,
and with `index.finetuned_embedder` on also `index.finetuned_dir` (the fine-tuned embedder's, which
`full` searches) once that embedder is trained. Until then only `index.dir` is written, and
eval.compare fills the fine-tuned index with the same documents when it builds it.

Layout of `index.dir` (one writer at a time, any number of readers):

    manifest.json        format version, embedder, state (ingesting|complete), generation, counts, sources
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
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from pipeline.config import add_config_arguments, config_from_args, load_config
from pipeline.errors import run_cli
from pipeline.index.ingestion import ingest_all_indexes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.index",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", action="append", default=[], metavar="PATH", help="A document file or folder (.md, .txt, .pdf, .html) to ingest besides the QA pairs; repeatable; added to index.sources of the profile. Every index the systems search (index.dir, and index.finetuned_dir when index.finetuned_embedder is on) mirrors the sources of this run: documents ingested before but not named now are removed.")
    parser.add_argument("--rebuild", action="store_true", help="Delete the indexes (their folders, and their collections on a Chroma server) and ingest from scratch. Use it when the index is damaged or was built by another version or embedder.")
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
        ingest_all_indexes(config, rebuild=args.rebuild, show_progress=not args.quiet, warn=lambda m: print(f"warning: {m}", file=sys.stderr))

    return run_cli(body)
