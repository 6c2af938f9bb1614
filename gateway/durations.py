"""Durations as operators write them (`90d`, `12h`, `30m`, `45s`, `2w`): token lifetimes and
grace periods on the command line and the admin API, the prompt retention in a gateway's config."""

from __future__ import annotations

import re

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds(text: str) -> float:
    """The duration in seconds; ValueError when `text` is not one."""
    match = DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 90d, 12h, 30m)")
    return float(match.group(1)) * _UNIT[match.group(2)]
