"""What a client is told about a body that is not JSON: msgspec's words, made plain where they mislead."""

from __future__ import annotations

import re

import msgspec

# A high-surrogate escape not followed by a low one: msgspec reports it as "Input data was truncated".
_LONE_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")


def invalid_json_message(body: bytes, exc: msgspec.DecodeError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"the body is not UTF-8: {exc}"
    message = str(exc)
    if message == "Input data was truncated":
        found = _LONE_HIGH_SURROGATE.search(body)
        if found is not None:
            return (f"JSON is malformed: a lone UTF-16 surrogate {found.group().decode()} (byte {found.start()}); "
                    "a \\uD800-\\uDBFF escape must be followed by a \\uDC00-\\uDFFF one")
    return message
