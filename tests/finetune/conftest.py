"""Fixtures of the fine-tuning tests: small prepared splits and an in-memory knowledge base."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import load_split
from pipeline.fileio import write_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    """Micro models: one torch thread is faster than two fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_data_dir(demo_dir, tmp_path_factory):
    """The first 40 / 10 / 10 demo pairs as prepared splits (train / val / test)."""
    out = tmp_path_factory.mktemp("small-data")
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        write_jsonl(out / f"{split}.jsonl", load_split(demo_dir, split)[:n])
    return out


def in_memory_kb(config, records, split="train"):
    """The project's KnowledgeBase over `records` with constant vectors: BM25 does the ranking,
    so no embedding model has to load."""
    from pipeline.index import KnowledgeBase, qa_nodes

    nodes = qa_nodes(records, source=f"{split}.jsonl", split=split)
    return KnowledgeBase.from_nodes(config, nodes, embeddings=[[1.0, 0.0, 0.0]] * len(nodes))


@pytest.fixture(scope="session")
def make_kb():
    return in_memory_kb
