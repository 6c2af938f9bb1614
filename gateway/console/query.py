"""Query-string parsing shared by the console's API: times, limits, filters."""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime, timezone

from gateway.tenancy.history import parse_cursor

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class BadQuery(ValueError):
    pass


def params(query_string: str) -> dict[str, str]:
    """The last value of each parameter; empty values count as absent (a form's blank field)."""
    return {k: v[-1] for k, v in urllib.parse.parse_qs(query_string).items() if v[-1] != ""}


def moment(text: str, now: float) -> float:
    """Unix seconds from `1768435200`, an ISO date or time (UTC unless it says otherwise), or a
    duration back from now (`30m`, `24h`, `7d`)."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"not a time: {text!r} (an ISO date, Unix seconds, or a duration back like 24h)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def integer(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(q.get(name, default))
    except ValueError:
        raise BadQuery(f"{name}: an integer") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{name}: between {lo} and {hi}")
    return value


def status_matches(spec: str) -> tuple[int, int]:
    """A status filter as a [lo, hi] range: `200`, `4xx`, `error` (>= 400) or `ok` (< 400)."""
    spec = spec.strip().lower()
    if spec == "ok":
        return 0, 399
    if spec == "error":
        return 400, 999
    if re.fullmatch(r"[1-5]xx", spec):
        return int(spec[0]) * 100, int(spec[0]) * 100 + 99
    if re.fullmatch(r"\d{3}", spec):
        return int(spec), int(spec)
    raise BadQuery("status: a code (429), a class (5xx), ok or error")


def cursor(text: str | None) -> tuple[float, int] | None:
    """A history page's `before`: the `next` of the page before it."""
    if text is None:
        return None
    try:
        return parse_cursor(text)
    except ValueError:
        raise BadQuery("before: the `next` cursor of a previous page") from None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
