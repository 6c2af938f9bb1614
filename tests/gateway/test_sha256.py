"""The lane's SHA-256 (csrc/gateway/sha256.cpp) against hashlib, both compressions: the SHA
extensions' (where this CPU has them) and the portable one, over every padding case."""
from __future__ import annotations

import hashlib
import random

import pytest

native = pytest.importorskip("gateway._native", reason="the native lane is not built")


@pytest.mark.parametrize("hardware", [True, False], ids=["sha-ni", "portable"])
def test_every_length_hashes_as_hashlib(hardware: bool) -> None:
    if hardware and not native.sha_ni_available():
        pytest.skip("this CPU has no SHA extensions")
    rng = random.Random(3)
    for length in [*range(0, 260), 1000, 4095, 65537]:
        data = rng.randbytes(length)
        assert native.sha256(data, hardware) == hashlib.sha256(data).digest(), length
