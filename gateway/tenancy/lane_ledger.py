"""The native lane's ledger journal (csrc/gateway/lane_journal.h) on the Python side: its entries,
and the replay of what a killed gateway left in it.

The lane journals the usage of each request it served under the tenant stages before it answers,
so the entry survives a kill -9 of the gateway. Every tick the lane records them itself
(csrc/gateway/lane_ledger.h): one audit record and one ledger row each, committed before its file
is emptied. At start, `replay` records what a killed gateway left in the lane's files and had not
recorded yet, each entry as the tenancy stage records a request it ended itself (`Tenancy.finish`):
the store that owns the database's journal does it as it opens (a gateway's, or the CLI's when no
gateway runs), when no lane can be writing them.
"""

from __future__ import annotations

import logging
import os

import msgspec

from gateway.tenancy.audit import AuditTrail
from gateway.tenancy.journal import scan_frames
from gateway.tenancy.store import Store, UsageRow

SUFFIX = "-lane-journal"
log = logging.getLogger(__name__)


class LaneEntry(UsageRow, array_like=True, kw_only=True):
    """One request the lane served: lane_journal.h LedgerEntry, field for field (a usage row's
    columns, then its audit record's client and reason), packed as an array."""

    client: str | None
    reason: str


_DECODER = msgspec.msgpack.Decoder(LaneEntry)


def parse(data: bytes) -> list[LaneEntry]:
    """The entries of a lane journal's bytes, up to the first torn or corrupt frame."""
    return scan_frames(data, _DECODER)[0]


def record(audit: AuditTrail, entries: list[LaneEntry]) -> None:
    """The entries' audit records and ledger rows, committed to the store when this returns (then
    the lane's file may be emptied); raises, recording nothing, when the commit fails."""
    rows = []
    for entry in entries:
        fields = msgspec.structs.astuple(entry)
        rows.append((fields[:12], entry.reason, entry.client))
    audit.append_rows(rows)


def replay(store: Store, audit: AuditTrail, path: str) -> int:
    """Records the entries that the lane files at `path` hold and the store lacks (a gateway killed
    between the lane's copy and the tick that records it, or between that and the file's release),
    then empties the files; returns how many it recorded. Only for the owner of the store's journal:
    no lane writes these files then."""
    entries: list[LaneEntry] = []
    paths = [f"{path}-{n}" for n in (0, 1)]
    for name in paths:
        try:
            with open(name, "rb") as f:
                entries += parse(f.read())
        except FileNotFoundError:
            continue
    missing = [e for e in sorted(entries, key=lambda e: e.time)
               if not store.has_audit_record(e.tenant, e.time, e.request_id)]
    if missing:
        record(audit, missing)
    for name in paths:
        if os.path.exists(name):
            os.truncate(name, 0)
    if missing:
        log.warning("recorded %d usage rows that the native lane had journaled before the gateway stopped",
                    len(missing))
    return len(missing)
