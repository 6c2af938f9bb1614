"""The one store interface for tokens, usage and audit records, and security policies.

SQLite (`sqlite_store.py`) is the embedded default; a fleet of gateways shares a PostgreSQL database
(`postgres_store.py`); `open_store.py` opens one or the other by its location. Writes return a `concurrent.futures.Future` that resolves once the write is
committed: a caller that must not lose a row (the usage row of a finished request) waits on it
(`await asyncio.wrap_future(f)`) before it sends the response's last byte; callers that need not
wait simply drop it. Reads are synchronous and fast (indexed lookups).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Protocol

import msgspec

from gateway.tenancy.history import HistoryEntry, HistoryQuery


class TokenRecord(msgspec.Struct, kw_only=True):
    id: str                       # public part of the secret, used to look the record up
    tenant: str
    tier: str
    secret_hash: bytes            # HMAC-SHA256(pepper, secret); the secret itself is never stored
    models: list[str]             # glob patterns of the models this token may use
    name: str = ""
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_to: str | None = None    # successor's id once rotated
    rotated_from: str | None = None


class UsageRow(msgspec.Struct, kw_only=True):
    request_id: str
    time: float
    tenant: str
    token_id: str
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int            # all completion tokens, reasoning included (as OpenAI counts them)
    reasoning_tokens: int
    cost_eur: float
    status: int
    latency_ms: float


class AuditRecord(msgspec.Struct, kw_only=True):
    seq: int
    time: float
    tenant: str | None
    token_id: str | None
    client: str | None
    model: str | None
    status: int
    reason: str                   # ok, auth, invalid_request, permission, limit, budget, security, lifecycle, ...
    input_tokens: int = 0
    output_tokens: int = 0
    verdict: str | None = None    # the prompt-security verdict, when one was given
    rules_version: str | None = None  # the rule files that gave it ("markup@2026.11.27-2,..."; security.rules_version())
    request_id: str = ""
    prompt: bytes | None = None   # AES-256-GCM ciphertext, only under a retention policy
    prompt_digest: str | None = None  # sha256 of the ciphertext: the chain survives a purge
    prev_hash: str = ""
    hash: str = ""
    # The chain it belongs to: each process writing records (a gateway, the CLI replaying a journal)
    # chains its own, so that gateways sharing a database never interleave one chain ("": records
    # from before chains had names).
    chain: str = ""


class PolicyRecord(msgspec.Struct, kw_only=True):
    """A tenant's prompt-security policy as an operator set it (security_policies.py)."""

    tenant: str
    modes: dict[str, str]         # each security layer's mode: on, flag_only or off
    updated_at: float


class Store(Protocol):
    # tokens
    def put_token(self, token: TokenRecord) -> Future[None]: ...
    # The successor stored and the old token's rotation written at once, unless some process
    # rotated or revoked the old one first: then nothing is written and the future gives False.
    def rotate_token(self, old: TokenRecord, new: TokenRecord) -> Future[bool]: ...
    # The token revoked at `at` unless some process revoked it first: then nothing is written
    # (its first revocation's time stays) and the future gives False.
    def revoke_token(self, token_id: str, at: float) -> Future[bool]: ...
    def get_token(self, token_id: str) -> TokenRecord | None: ...
    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]: ...
    def tokens_version(self) -> int: ...  # moves whenever a token is written, by any process

    # usage and audit: one atomic write per finished or refused request
    def record(self, usage: UsageRow | None, audit: AuditRecord | None) -> Future[None]: ...
    def insert_rows(self, usage_rows: list[tuple], audit_rows: list[tuple], chain: str, head: str) -> None: ...  # committed on return
    def usage(self, tenant: str | None, since: float, until: float | None = None) -> list[UsageRow]: ...
    def cost_since(self, tenant: str, since: float) -> float: ...
    def has_audit_record(self, tenant: str | None, time: float, request_id: str) -> bool: ...
    def audit_records(self) -> Iterable[AuditRecord]: ...
    def history(self, query: HistoryQuery) -> list[HistoryEntry]: ...  # a page, by time (history.py)
    # each chain's (seq, hash) of its last record; (-1, the raw value) for one that is unreadable
    def audit_heads(self) -> dict[str, tuple[int, str]]: ...
    def purge_prompts(self, before: float) -> Future[int]: ...

    # per-tenant security policies set by operators
    def put_policy(self, record: PolicyRecord) -> Future[None]: ...
    def delete_policy(self, tenant: str) -> Future[bool]: ...
    def policies(self) -> list[PolicyRecord]: ...

    # settings shared by the gateway and the CLI (the token pepper, for one)
    def get_meta(self, key: str) -> str | None: ...
    def set_meta_once(self, key: str, value: str) -> str: ...

    # why what this store writes no longer reaches its database (a file deleted under it, a server
    # that cannot be reached), else None
    def file_lost(self) -> str | None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
