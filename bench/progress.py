"""A progress bar on a plain terminal: one line redrawn with a carriage return, no dependency.

On a stream that is not a terminal (a log file, CI) it stays quiet until the end, then writes
one summary line, so logs do not fill with redraws.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, label: str, total: int | None, stream: TextIO | None = None,
                 tty: bool | None = None, min_interval: float = 0.1) -> None:
        self.label, self.total = label, total  # total None: a duration-bound level, counted up
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = self.errors = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._min_interval = min_interval

    def update(self, ok: bool) -> None:
        self.done += 1
        self.errors += not ok
        now = time.perf_counter()
        if self.tty and (now - self._last_draw >= self._min_interval or self.done == self.total):
            self._last_draw = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            filled = min(WIDTH, WIDTH * self.done // self.total)
            bar = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done} done"
        return f"{self.label} {bar}  {rate:.2f} req/s  errors {self.errors}  {elapsed:.0f}s"

    def close(self) -> None:
        self.stream.write(("\r" + self.line() + "\n") if self.tty else (self.line() + "\n"))
        self.stream.flush()
