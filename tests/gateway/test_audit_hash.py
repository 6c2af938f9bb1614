"""The lane's audit hash (csrc/gateway/audit_hash.h) against gateway/tenancy/audit.py's record_hash,
which `llmaas audit verify` recomputes: byte-identical canonical JSON for every string and float
a record can carry, or the lane's chain would fail verification."""
from __future__ import annotations

import random
import struct

import pytest

from gateway.tenancy.audit import record_hash
from gateway.tenancy.store import AuditRecord

native = pytest.importorskip("gateway._native", reason="the native lane is not built")

STRINGS = ["", "acme", 'quote " and \\ backslash', "".join(map(chr, range(0x20))), "\x7f del",
           "é ü 中文 \u2028 \U0001F600", "/slash/ <tag> &amp;", "x" * 300]
FLOATS = [0.0, -0.0, 1764323452.0, 1764323452.5, 1764323452.123456, 1e-5, 9.99999e-6, 1.234e-5, 0.5, 3.0,
          1e15, 9999999999999998.0, 1e16, 1.2345678901234567e16, 1e21, 1e300, 5e-324, 1e-7, -2.5, 123.456e-10]


def both(seq: int, time: float, tenant: str, token_id: str, client: str | None, model: str, status: int,
         reason: str, input_tokens: int, output_tokens: int, request_id: str, prev: str, chain: str) -> tuple[str, str]:
    record = AuditRecord(seq=seq, time=time, tenant=tenant, token_id=token_id, client=client, model=model,
                         status=status, reason=reason, input_tokens=input_tokens, output_tokens=output_tokens,
                         verdict=None, rules_version=None, request_id=request_id, prompt=None, prompt_digest=None,
                         prev_hash=prev, chain=chain)
    return record_hash(record), native.audit_record_hash(seq, time, tenant, token_id, client, model, status, reason,
                                                         input_tokens, output_tokens, request_id, prev, chain)


@pytest.mark.parametrize("text", STRINGS)
def test_every_string_field_escapes_as_msgspec_does(text: str) -> None:
    python, lane = both(1, 1764323452.25, text, text, text or None, text, 200, text, 3, 4, text, text, text or "c")
    assert python == lane


@pytest.mark.parametrize("time", FLOATS)
def test_floats_print_as_msgspec_prints_them(time: float) -> None:
    python, lane = both(7, time, "t", "k", None, "m", 200, "ok", 1, 2, "r", "", "chain")
    assert python == lane


def test_random_records() -> None:
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(0x80)] + ["é", "中", "\U0001F600", "\u2028"]
    for _ in range(2000):
        def text() -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        time = struct.unpack("<d", rng.randbytes(8))[0] if rng.random() < 0.2 else rng.uniform(1.7e9, 1.8e9)
        if time != time or time in (float("inf"), float("-inf")):
            continue  # a clock gives neither
        fields = (rng.randrange(1, 1 << 40), time, text(), text(), rng.choice([None, text() or "c"]), text(),
                  rng.choice([200, 400, 499, 503]), text(), rng.randrange(0, 1 << 31), rng.randrange(0, 1 << 20),
                  text(), text(), text() or "c")
        python, lane = both(*fields)
        assert python == lane, fields
