"""What a client is told about a body that is not JSON, or not the JSON asked for: msgspec's words,
made plain where they mislead, and the field they are about (OpenAI's `param`)."""

from __future__ import annotations

import re

import msgspec

# msgspec's validation messages end with "- at `$.field...`", whose first key is the field; a
# top-level field that is missing is named only as "Object missing required field `field`".
_FIELD = re.compile(r"`\$\.([A-Za-z_][A-Za-z0-9_]*)")
_MISSING = re.compile(r"^Object missing required field `([A-Za-z_][A-Za-z0-9_]*)`$")
# A high-surrogate escape not followed by a low one: msgspec reports it as "Input data was truncated".
_LONE_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")


def invalid_json_message(body: bytes, exc: msgspec.DecodeError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"the body is not UTF-8: {exc}"
    message = str(exc)
    if message == "Input data was truncated":
        if not body.strip():
            return "the body is empty: a JSON object is expected"
        found = _LONE_HIGH_SURROGATE.search(body)
        if found is not None:
            return (f"JSON is malformed: a lone UTF-16 surrogate {found.group().decode()} (byte {found.start()}); "
                    "a \\uD800-\\uDBFF escape must be followed by a \\uDC00-\\uDFFF one")
    return message


def validation_param(message: str) -> str | None:
    """The top-level request field a msgspec validation message is about."""
    match = _FIELD.search(message) or _MISSING.match(message)
    return match.group(1) if match else None
