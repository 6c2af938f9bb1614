"""The tamper-evident audit trail: one record per access, allowed or refused, each chaining the
hash of the one before.

hash = sha256(canonical JSON of every field but `prompt` and `hash`, `prev_hash` included). The
prompt ciphertext is covered through its digest, so purging it after the retention period keeps
the chain valid. `verify` walks the records in stored order and reports, by seq:
- edited: a record whose fields no longer give its hash (or whose prompt no longer gives its digest),
  or one whose hash was recomputed after an edit (the next record's prev_hash no longer matches);
- deleted: a gap in the sequence numbers, or a missing tail (the head kept beside the chain is
  ahead of the last record);
- reordered: a sequence number that goes backwards.
A chain rewritten wholesale from the first edit on, head included, is consistent again: that is
why `verify` prints the head (seq and hash), for operators to note outside the database.

Each AuditTrail (one a process: a gateway, or the CLI recording a killed gateway's journal) writes
a chain of its own, named at random when it starts, with its own seqs from 1 and its own head in
`meta`: gateways sharing a database interleave their records in the table, never in a chain (the
seq and prev_hash are assigned under a lock, in the order the writes are queued). `verify` checks
each chain apart; a restarted gateway starts a new one. Records from before chains had names form
the chain "", whose hashes do not cover a name.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterable
from concurrent.futures import Future

import msgspec
from cryptography.exceptions import InvalidTag

from gateway.tenancy.clock import Clock
from gateway.tenancy.encryption import PromptCipher
from gateway.tenancy.store import AuditRecord, Store, UsageRow

_ENCODER = msgspec.json.Encoder()
# AuditTrail.append_rows reads usage rows and writes audit rows as tuples, in these orders.
assert UsageRow.__struct_fields__ == ("request_id", "time", "tenant", "token_id", "model", "input_tokens",
                                      "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost_eur",
                                      "status", "latency_ms")
assert AuditRecord.__struct_fields__ == ("seq", "time", "tenant", "token_id", "client", "model", "status", "reason",
                                         "input_tokens", "output_tokens", "verdict", "rules_version", "request_id",
                                         "prompt", "prompt_digest", "prev_hash", "hash", "chain")


class Problem(msgspec.Struct):
    seq: int
    kind: str  # edited, deleted, reordered
    message: str
    chain: str = ""


def record_hash(r: AuditRecord) -> str:
    # AuditTrail.append_rows hashes the same tuple, built from a usage row: keep the two alike.
    fields: tuple = (r.seq, r.time, r.tenant, r.token_id, r.client, r.model, r.status, r.reason, r.input_tokens,
                     r.output_tokens, r.verdict, r.request_id, r.prompt_digest, r.prev_hash)
    if r.rules_version is not None:  # only then: records written before the field keep their hashes
        fields += (r.rules_version,)
    if r.chain:  # likewise; tagged, so that it never reads as a rules version
        fields += (("chain", r.chain),)
    return hashlib.sha256(_ENCODER.encode(fields)).hexdigest()


def _gaps(seen: Iterable[int], last: int) -> list[tuple[int, int]]:
    """The runs of 1..last missing from `seen`, found without walking the numbers: a tampered seq or
    head may be any integer (10**12 would take hours to walk)."""
    out: list[tuple[int, int]] = []
    expected = 1
    for n in sorted(n for n in set(seen) if 1 <= n <= last):
        if n > expected:
            out.append((expected, n - 1))
        expected = n + 1
    if expected <= last:
        out.append((expected, last))
    return out


def verify(records: Iterable[AuditRecord], heads: dict[str, tuple[int, str]]) -> list[Problem]:
    """Every chain's problems (see the module docstring), by chain then seq; `heads` as the store
    keeps them. A chain with records and no head lost its head: the two are written together."""
    chains: dict[str, list[AuditRecord]] = {}
    for r in records:
        # An edit may store a blob as the chain's name: it sorts with the others as its repr.
        chains.setdefault(r.chain if isinstance(r.chain, str) else repr(r.chain), []).append(r)
    problems: list[Problem] = []
    for chain in sorted(chains.keys() | heads.keys()):
        found = verify_chain(chains.get(chain, []), heads.get(chain, (0, "")))
        if chain not in heads and chain:
            found.append(Problem(0, "deleted", "the chain's head is missing"))
        problems += [msgspec.structs.replace(p, chain=chain) for p in sorted(found, key=lambda p: p.seq)]
    return problems


def verify_chain(records: Iterable[AuditRecord], head: tuple[int, str]) -> list[Problem]:
    """One chain's records in stored order, against its head."""
    problems: list[Problem] = []
    hashes: dict[int, str] = {0: ""}  # seq -> hash of the records seen so far
    expected, top = 1, 0
    for r in records:
        if type(r.seq) is not int:  # SQLite keeps whatever an edit stores: a tampering, not a crash
            problems.append(Problem(expected, "edited", f"the record stored after record {expected - 1} has "
                                                        f"seq {r.seq!r}, not a whole number"))
            continue
        if record_hash(r) != r.hash:
            problems.append(Problem(r.seq, "edited", f"record {r.seq} does not match its hash"))
        if r.prompt is not None and (not isinstance(r.prompt, bytes)
                                     or hashlib.sha256(r.prompt).hexdigest() != r.prompt_digest):
            problems.append(Problem(r.seq, "edited", f"record {r.seq}: the stored prompt does not match its digest"))
        if r.seq < expected:
            problems.append(Problem(r.seq, "reordered", f"record {r.seq} comes after record {expected - 1}"))
        # The link to the record before it in the chain, wherever that one is stored.
        before = hashes.get(r.seq - 1)
        if before is not None and r.prev_hash != before:
            problems.append(Problem(r.seq - 1, "edited",
                                    f"record {r.seq - 1} was changed and rehashed (record {r.seq} no longer chains to it)"))
        hashes[r.seq] = r.hash
        expected, top = max(expected, r.seq + 1), max(top, r.seq)
    head_seq, head_hash = head
    if head_seq < 0:  # the store's mark of a head that is not "seq:hash"
        problems.append(Problem(0, "edited", f"the chain's recorded head is unreadable: {head_hash!r}"))
        head_seq, head_hash = 0, ""
    for first, last in _gaps(hashes, max(top, head_seq)):
        span = f"{first}" if first == last else f"{first}..{last}"
        where = "at the end" if last > top else f"before record {last + 1}"
        problems.append(Problem(first, "deleted", f"record(s) {span} missing {where}"))
    if head_seq and head_seq == top and hashes.get(top) != head_hash:
        problems.append(Problem(top, "edited", f"record {top} differs from the recorded head"))
    return sorted(problems, key=lambda p: p.seq)


class AuditTrail:
    def __init__(self, store: Store, clock: Clock, cipher: PromptCipher | None = None,
                 retention_s: float | None = None) -> None:
        self._store, self._clock = store, clock
        # Prompt text is kept only when both a key and a retention period are configured.
        self._cipher = cipher if retention_s else None
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self.chain = secrets.token_hex(4)
        self._seq, self._hash = 0, ""

    def append(self, *, status: int, reason: str, tenant: str | None = None, token_id: str | None = None,
               client: str | None = None, model: str | None = None, input_tokens: int = 0, output_tokens: int = 0,
               verdict: str | None = None, rules_version: str | None = None, request_id: str = "",
               prompt: str | None = None, usage: UsageRow | None = None) -> Future[None]:
        """Chains one record and queues it with the request's usage row (one transaction). The
        record takes the usage row's time: one request, one timestamp, which is how the request
        history (history.py) finds a record's ledger row."""
        blob = digest = None
        if prompt is not None and self._cipher is not None:
            blob = self._cipher.encrypt(prompt, request_id)
            digest = hashlib.sha256(blob).hexdigest()
        now = usage.time if usage is not None else self._clock.time()
        with self._lock:
            record = AuditRecord(seq=self._seq + 1, time=now, tenant=tenant, token_id=token_id, client=client,
                                 model=model, status=status, reason=reason, input_tokens=input_tokens,
                                 output_tokens=output_tokens, verdict=verdict, rules_version=rules_version,
                                 request_id=request_id,
                                 prompt=blob, prompt_digest=digest, prev_hash=self._hash, chain=self.chain)
            record.hash = record_hash(record)
            # Queued inside the lock, so the writer commits records in chain order.
            future = self._store.record(usage, record)
            self._seq, self._hash = record.seq, record.hash
        return future

    def append_rows(self, rows: list[tuple[tuple, str, str | None]]) -> None:
        """Chains one record per (usage row as a tuple in column order, reason, client) and commits
        them with their rows now
        (the native lane's requests, durable in its journal until this returns); the chain moves
        only if the commit succeeds. Rows go to the store as tuples, in column order, with no
        record objects: at the lane's rates (tens of thousands a second) those cost as much as
        SQLite's inserts. The lane's records have no verdict, rules version or prompt."""
        chain, tag = self.chain, ("chain", self.chain)
        with self._lock:
            seq, prev = self._seq, self._hash
            audit_rows = []
            for u, reason, client in rows:
                seq += 1
                request_id, time, tenant, token_id, model, input_tokens, _, output_tokens, _, _, status, _ = u
                digest = hashlib.sha256(_ENCODER.encode((seq, time, tenant, token_id, client, model, status, reason,
                                                         input_tokens, output_tokens, None, request_id, None,
                                                         prev, tag))).hexdigest()
                # AuditRecord's columns, in order.
                audit_rows.append((seq, time, tenant, token_id, client, model, status, reason, input_tokens,
                                   output_tokens, None, None, request_id, None, None, prev, digest, chain))
                prev = digest
            self._store.insert_rows([u for u, _, _ in rows], audit_rows, chain, f"{seq}:{prev}")
            self._seq, self._hash = seq, prev

    @property
    def cipher(self) -> PromptCipher | None:
        """The key's cipher when prompt text is kept (a key and a retention period are set)."""
        return self._cipher

    @property
    def keeps_prompts(self) -> bool:
        """Whether `append` keeps the prompt text it is given."""
        return self._cipher is not None

    def prompt_text(self, record: AuditRecord) -> str | None:
        if record.prompt is None or self._cipher is None:
            return None
        return self._cipher.decrypt(record.prompt, record.request_id)

    def purge(self) -> int:
        """Drops prompt text older than the retention period; returns how many were dropped."""
        if not self.retention_s:
            return 0
        return self._store.purge_prompts(self._clock.time() - self.retention_s).result()

    def verify(self) -> list[Problem]:
        return verify(self._store.audit_records(), self._store.audit_heads())


def export_jsonl(records: Iterable[AuditRecord], cipher: PromptCipher | None = None) -> Iterable[bytes]:
    """One JSON object per line, without prompt ciphertext (its digest stays, for the chain); with
    `cipher`, a record that still keeps its prompt has its text under "prompt_text"."""
    for r in records:
        line = _ENCODER.encode(msgspec.structs.replace(r, prompt=None))
        if cipher is not None and r.prompt is not None:
            try:
                text = cipher.decrypt(r.prompt, r.request_id)
            except InvalidTag:
                raise ValueError(f"record {r.seq}: its prompt does not decrypt with this key") from None
            line = line[:-1] + b',"prompt_text":' + _ENCODER.encode(text) + b"}"
        yield line + b"\n"
