"""Per-token model permissions: shell-style globs (`granite*`, `qwen3:*`), matched case-sensitively.

The patterns are compiled once into one regular expression, and each answer is memoised per
token, so a check on the request path is one dict lookup.
"""

from __future__ import annotations

import fnmatch
import re


class ModelPatterns:
    __slots__ = ("patterns", "_regex", "_memo")

    def __init__(self, patterns: list[str]) -> None:
        cleaned = [p.strip() for p in patterns if p.strip()]
        if not cleaned:
            raise ValueError("a token needs at least one model pattern ('*' allows every model)")
        self.patterns = cleaned
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in cleaned))
        self._memo: dict[str, bool] = {}

    def allows(self, model: str) -> bool:
        hit = self._memo.get(model)
        if hit is None:
            hit = self._regex.match(model) is not None
            if len(self._memo) < 4096:  # bounded: model names come from clients
                self._memo[model] = hit
        return hit


def parse_patterns(text: str) -> list[str]:
    """`'granite*,qwen3:*'` as typed on the command line."""
    return [p.strip() for p in text.split(",") if p.strip()]
