"""The ledger journal: an append-only file that makes a finished request's usage row and audit
record durable with one copy into a shared memory map, so that no request waits on an SQLite commit.

Each entry is one frame, copied whole into a MAP_SHARED mapping of the journal file:

    u32 length | u32 crc32(payload) | payload = msgpack [usage row or nil, audit record]

Once the copy is done, the bytes are in the kernel's page cache: a kill -9 of the process cannot
take them (power loss can, like SQLite's synchronous=NORMAL). A copy, not `os.write()`: the copy
costs 0.3-0.45 us where the system call costs 1.6 us alone, and 2-7 us a request through
`Proxy.handle`, since it lets go of the GIL and the writer thread may take it. The file's blocks are reserved (`posix_fallocate`) before they are mapped, so a full disk fails the
write with OSError instead of a SIGBUS at the copy; past the mapping's end it grows (doubling).
The unused tail reads as zeros, which ends the frames (a zero length); closing cuts it off.

The store's writer commits entries to SQLite in batches. There are two files, written in turn: as
the writer takes a batch it switches the writes to the other file, and once the batch is committed
it empties the one it took (so the journal stays small under constant load, which never leaves it
empty). A store that opens the database replays both first (entries whose audit record is not in
SQLite are inserted, in chain order). A torn or corrupt tail (only possible on power loss or a full
disk) ends the replay: the checksum catches it.

One process owns a journal at a time (an exclusive flock, which the kernel drops when the process
dies): a second store on the same database (the CLI beside a running gateway) gets none and commits
its own rows directly, and never replays what the gateway has not committed yet.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time
import zlib
from typing import Any

import msgspec

from gateway.tenancy.store import AuditRecord, UsageRow

_HEADER = struct.Struct("<II")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(tuple[UsageRow | None, AuditRecord])
SUFFIX = "-ledger-journal"
_FIRST_MAP = 1 << 20  # a mapping's first size: ~2,500 requests' frames, grown by doubling past that

Entry = tuple[UsageRow | None, AuditRecord]


class JournalBusy(Exception):
    """Another live process owns this database's journal."""


def frame(usage: UsageRow | None, audit: AuditRecord) -> bytes:
    payload = _ENCODER.encode((usage, audit))
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan_frames(data: bytes, decoder: msgspec.msgpack.Decoder = _DECODER) -> tuple[list[Any], int]:
    """The entries of a journal's bytes up to the first torn, corrupt or zero (unwritten) frame,
    and the offset where they end. (The native lane's journal has the same frames: lane_ledger.py.)"""
    entries: list[Any] = []
    pos, size = 0, len(data)
    while pos + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start:start + length]
        if length == 0 or len(payload) < length or zlib.crc32(payload) != crc:
            break
        try:
            entries.append(decoder.decode(payload))
        except msgspec.DecodeError:
            break
        pos = start + length
    return entries, pos


def _reserve(fd: int, size: int) -> None:
    """Makes the file `size` bytes long with its blocks allocated; a file system without
    fallocate (or an OS without posix_fallocate) gets a sparse extension, as a write would have."""
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise  # ENOSPC above all: the write fails, as a short write did
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))


def parse(data: bytes) -> list[Entry]:
    """The entries of a journal's bytes, up to the first torn or corrupt frame."""
    return scan_frames(data)[0]


class Journal:
    """Not thread-safe: the store serialises `write`, `switch` and `truncate` under its own lock."""

    def __init__(self, path: str, wait_s: float = 0.0) -> None:
        """wait_s: how long to wait for another process to let it go (a CLI command holds it for
        the moments it runs; another gateway, for good)."""
        self.path = path
        self.paths = (f"{path}-0", f"{path}-1")
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        first = os.open(self.paths[0], flags, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)  # on the first file: it guards both
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(first)
                    raise JournalBusy(path) from None
                time.sleep(0.05)
        self._fds = [first, os.open(self.paths[1], flags, 0o600)]
        self._maps: list[mmap.mmap | None] = [None, None]
        # Where each file's next frame goes: after the frames already there (a replay truncates them).
        self._ends = [scan_frames(self._contents(fd))[1] for fd in self._fds]
        self._active = 0

    @staticmethod
    def _contents(fd: int) -> bytes:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0) if size else b""

    def read(self) -> list[Entry]:
        """Both files' entries in chain order (audit seq)."""
        entries = []
        for fd in self._fds:
            entries += scan_frames(self._contents(fd))[0]
        return sorted(entries, key=lambda e: e[1].seq)

    def write(self, data: bytes) -> None:
        n = self._active
        start = self._ends[n]
        end = start + len(data)
        mapped = self._maps[n]
        if mapped is None or end > len(mapped):
            mapped = self._map(n, end)
        mapped[start:end] = data
        self._ends[n] = end

    def _map(self, n: int, needed: int) -> mmap.mmap:
        """File n's mapping, at least `needed` bytes, its blocks reserved (OSError when the disk is full)."""
        mapped = self._maps[n]
        size = max(_FIRST_MAP, len(mapped) if mapped is not None else 0)
        while size < needed:
            size *= 2
        _reserve(self._fds[n], size)
        if mapped is not None:
            mapped.close()  # remapped whole: rare (a batch past the mapping), and portable, unlike resize
        mapped = self._maps[n] = mmap.mmap(self._fds[n], size)
        return mapped

    def switch(self) -> int:
        """Sends later writes to the other file; returns the one written so far."""
        taken, self._active = self._active, 1 - self._active
        return taken

    def truncate(self, which: int | None = None) -> None:
        """Empties file `which` (both when None, as after a replay): its entries are committed. A
        mapped file keeps its mapping and blocks, its frames zeroed (a few microseconds a batch):
        shrinking it would make every batch map, reserve and fault its pages in anew, which costs
        more than the copies themselves."""
        for n in (0, 1) if which is None else (which,):
            mapped = self._maps[n]
            if mapped is not None:
                mapped[:self._ends[n]] = bytes(self._ends[n])
            else:
                os.ftruncate(self._fds[n], 0)
            self._ends[n] = 0

    def close(self) -> None:
        for n, fd in enumerate(self._fds):
            mapped, self._maps[n] = self._maps[n], None
            if mapped is not None:
                mapped.close()
            os.ftruncate(fd, self._ends[n])  # the reserved tail goes; the frames stay for the replay
            os.close(fd)  # the first drops the flock
        self._fds = []
