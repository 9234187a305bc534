"""Plain helpers shared by several test modules. The bad-input builders run at collection time
(inside `parametrize` lists), so they cannot be fixtures; `pythonpath = ["tests"]` in
pyproject.toml makes this module importable under `--import-mode=importlib`."""

from __future__ import annotations

import json
import os
import struct
import zlib


def png_bytes() -> bytes:
    """A real 1x1 PNG image: signature, IHDR (with its NUL bytes), IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def row(**fields) -> str:
    """One JSONL line with these fields, non-ASCII kept as is."""
    return json.dumps(fields, ensure_ascii=False) + "\n"


# Valid but unusual text: every script, emoji, and the characters str.splitlines breaks at
# (U+2028, U+0085, U+000B) although JSON keeps them raw inside strings.
MULTILINGUAL = [
    {"question": "什么是 B 树？", "answer": "B 树是一种自平衡的搜索树。"},
    {"question": "Что такое хеш-таблица?", "answer": "Структура данных для быстрого поиска по ключу."},
    {"question": "ما هو التخزين المؤقت؟", "answer": "حفظ نسخة من البيانات قريبة من المستخدم."},
    {"question": "キャッシュとは何ですか 🚀?", "answer": "データの一時保存です 💾。"},
    {"question": "What is a mutex 🔒 ?", "answer": "A lock 🔐 that one thread holds at a time."},
    {"question": "Line\u2028separator and next\u0085line and\x0bvertical tab?", "answer": "Kept\u2029as is."},
    {"question": "Ünïcödé façade naïve coöperate?", "answer": "Diacritics stay."},
    {"question": "עברית: מה זה תור?", "answer": "מבנה נתונים FIFO."},
]


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Short technical passages on distinct topics: candidates for reranking and embedding tests.
TECH_PASSAGES = [
    "A B-tree keeps keys sorted so range scans and point lookups take logarithmic time.",
    "TCP slow start doubles the congestion window every round trip until loss occurs.",
    "Garbage collection reclaims memory that is no longer reachable from the roots.",
    "An index on a column lets the database avoid a full table scan for selective queries.",
    "Kubernetes schedules pods onto nodes according to resource requests.",
    "Hash tables give constant expected-time lookups but no ordering of keys.",
    "The CAP theorem says a partitioned system must choose consistency or availability.",
]


def micro_lm_config(tiny_lm_dir, data_dir, run_dir, *sets: str):
    """The tiny profile on the session's micro LM and prepared splits, under `run_dir`, with `sets`
    (the adapter-training tests' config)."""
    from pipeline.config import load_config

    return load_config("tiny", [f"run_dir={run_dir}", f"data.dir={data_dir}", f"generator.model={tiny_lm_dir}", *sets])
