"""Builders shared by the bad-input matrices (tests/*/test_bad_input_*.py). They run at collection
time (inside `parametrize` lists), so they are plain functions, not fixtures; `pythonpath = ["tests"]`
in pyproject.toml makes this module importable under `--import-mode=importlib`."""

from __future__ import annotations

import json
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
