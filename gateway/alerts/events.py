"""Alert events (firing, resolved) and where they are kept.

Storage choice: a bounded in-memory list (the console's view, newest last) plus, when configured,
an append-only JSON-lines file that is read back at start, so the history survives restarts
without a table in the tenancy database (which another component owns and migrates). The file is
written with one `write` per event, after the event is decided; a crash loses at most the event
being written, and a torn last line is skipped on load.
"""

from __future__ import annotations

import os
from collections import deque

import msgspec


class AlertEvent(msgspec.Struct, kw_only=True):
    id: str                     # rule name + labels: the same for the firing and its resolution
    rule: str
    kind: str
    state: str                  # "firing" or "resolved"
    severity: str
    labels: dict[str, str]
    value: float                # the reading that decided the event (the last breaching one when resolved)
    threshold: float
    since: float                # when the condition started holding (Unix time)
    time: float                 # when this event was decided
    summary: str = ""


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(AlertEvent)


class EventLog:
    def __init__(self, size: int = 1000, path: str | None = None) -> None:
        self.path = path
        self._events: deque[AlertEvent] = deque(maxlen=size)
        self._torn = False  # the file ends mid-line: the next event starts on a new one
        if path is not None and os.path.exists(path):
            with open(path, "rb") as f:
                for line in f:
                    self._torn = not line.endswith(b"\n")
                    try:
                        self._events.append(_DEC.decode(line))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # a line torn by a crash, or not ours

    def append(self, event: AlertEvent) -> None:
        self._events.append(event)
        if self.path is not None:
            with open(self.path, "ab") as f:
                f.write((b"\n" if self._torn else b"") + _ENC.encode(event) + b"\n")
            self._torn = False

    def events(self) -> list[AlertEvent]:
        return list(self._events)

    def active(self) -> list[AlertEvent]:
        """The last event of each alert whose last event is `firing` (as restored from the file)."""
        last: dict[str, AlertEvent] = {}
        for e in self._events:
            last[e.id] = e
        return [e for e in last.values() if e.state == "firing"]
