"""The ledger journal: an append-only file that makes a finished request's usage row and audit
record durable with one `os.write()`, so that no request waits on an SQLite commit.

Each entry is one frame, written whole by a single write on an O_APPEND descriptor:

    u32 length | u32 crc32(payload) | payload = msgpack [usage row or nil, audit record]

Once `os.write` returns, the bytes are in the kernel's page cache: a kill -9 of the process cannot
take them (power loss can, like SQLite's synchronous=NORMAL). The store's writer commits entries to
SQLite in batches. There are two files, written in turn: as the writer takes a batch it switches
the writes to the other file, and once the batch is committed it truncates the one it took (so the
journal stays small under constant load, which never leaves it empty). A store that opens the
database replays both first (entries whose audit record is not in SQLite are inserted, in chain
order). A torn or corrupt tail (only possible on power loss or a full disk)
ends the replay: the checksum catches it.

One process owns a journal at a time (an exclusive flock, which the kernel drops when the process
dies): a second store on the same database (the CLI beside a running gateway) gets none and commits
its own rows directly, and never replays what the gateway has not committed yet.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib

import msgspec

from gateway.tenancy.store import AuditRecord, UsageRow

_HEADER = struct.Struct("<II")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(tuple[UsageRow | None, AuditRecord])
SUFFIX = "-ledger-journal"


class JournalBusy(Exception):
    """Another live process owns this database's journal."""


def frame(usage: UsageRow | None, audit: AuditRecord) -> bytes:
    payload = _ENCODER.encode((usage, audit))
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def parse(data: bytes) -> list[tuple[UsageRow | None, AuditRecord]]:
    """The entries of a journal's bytes, up to the first torn or corrupt frame."""
    entries: list[tuple[UsageRow | None, AuditRecord]] = []
    pos, size = 0, len(data)
    while pos + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start:start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            entries.append(_DECODER.decode(payload))
        except msgspec.DecodeError:
            break
        pos = start + length
    return entries


class Journal:
    """Not thread-safe: the store serialises `write` and `switch` under its own lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.paths = (f"{path}-0", f"{path}-1")
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        first = os.open(self.paths[0], flags, 0o600)
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)  # on the first file: it guards both
        except BlockingIOError:
            os.close(first)
            raise JournalBusy(path) from None
        self._fds = [first, os.open(self.paths[1], flags, 0o600)]
        self._active = 0

    def read(self) -> list[tuple[UsageRow | None, AuditRecord]]:
        """Both files' entries in chain order (audit seq)."""
        entries = []
        for fd in self._fds:
            size = os.fstat(fd).st_size
            entries += parse(os.pread(fd, size, 0)) if size else []
        return sorted(entries, key=lambda e: e[1].seq)

    def write(self, data: bytes) -> None:
        # One write per entry: O_APPEND places it whole at the end.
        if os.write(self._fds[self._active], data) != len(data):
            raise OSError(f"{self.paths[self._active]}: short write (disk full?)")

    def switch(self) -> int:
        """Sends later writes to the other file; returns the one written so far."""
        taken, self._active = self._active, 1 - self._active
        return taken

    def truncate(self, which: int | None = None) -> None:
        for n in (0, 1) if which is None else (which,):
            os.ftruncate(self._fds[n], 0)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)  # the first drops the flock
        self._fds = []
