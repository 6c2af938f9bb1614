"""The lane journal's frame checksum (csrc/gateway/lane_journal.cpp, sliced by 8 bytes) against
zlib.crc32, which the Python side checks its frames with: every length around the slices, and
every starting offset within one."""
from __future__ import annotations

import random
import zlib

import pytest

native = pytest.importorskip("gateway._native", reason="the native lane is not built")


def test_every_length_and_offset_checks_as_zlib() -> None:
    rng = random.Random(7)
    data = rng.randbytes(1100)
    for length in [*range(0, 300), 1024, 1100]:
        for offset in range(0, 8) if length <= 1092 else [0]:
            chunk = data[offset:offset + length]
            assert native.journal_crc32(chunk) == zlib.crc32(chunk), (length, offset)
    assert native.journal_crc32(b"\xff" * 64) == zlib.crc32(b"\xff" * 64)
