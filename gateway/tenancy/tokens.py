"""API tokens: creation, lookup, constant-time verification, rotation with grace, expiry, revocation.

A secret reads `llmaas-<id>_<key>`: `id` is 12 random base32 characters (60 bits, public: it names
the token in lists, the ledger and the audit trail, and finds its record in O(1)); `key` is 32
random bytes (256 bits) in base64url. The store keeps only HMAC-SHA256(pepper, key): a stolen
database yields no usable secret, and without the pepper not even a way to test guesses offline.
The pepper comes from LLMAAS_TOKEN_PEPPER or, failing that, is made once and kept in the store
(so the CLI and the gateway agree). Verification compares digests with hmac.compare_digest.

Rotation makes a successor with the same tenant, tier and models and caps the old token's expiry
at now + grace, so clients can move over without downtime.

Automatic rotation (the policy in the tier config's [tokens] table): the first request made with a
token older than `max_age_days` rotates it. That one response carries the new secret in the
`x-llmaas-new-api-key` header, with `x-llmaas-api-key-expires` (the old secret's last valid
moment, RFC 3339). Until then, every response to the old token carries
`x-llmaas-api-key-rotated: <successor id>` and the same expiry, so a client that missed the header
knows to ask its operator (`llmaas tokens list --tenant T` shows the successor) before the grace
ends. The secret is never stored, so it cannot be shown twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gateway.tenancy.clock import Clock
from gateway.tenancy.errors import AuthenticationError
from gateway.tenancy.permissions import ModelPatterns
from gateway.tenancy.store import Store, TokenRecord
from gateway.tenancy.tiers import TokenPolicy

PREFIX = "llmaas-"
PEPPER_ENV = "LLMAAS_TOKEN_PEPPER"
_ID_LEN = 12
_KEY_BYTES = 32
# A tenant names a customer in the ledger, the audit trail and every filter by tenant: never empty
# (an empty name reads as "no filter" in too many places), no spaces or control characters.
TENANT_NAME = re.compile(r"[\w.@:+\-]{1,128}")
MAX_LIFETIME_S = 100 * 365 * 86400.0  # a lifetime, beyond which dates stop being printable
# How often a key with an unknown id may make the view check the store for new tokens (made by the
# CLI or another gateway: usable at once, not after the next refresh), whatever number of them come.
MISS_CHECK_S = 0.05
log = logging.getLogger(__name__)


def _within(now: float, since: float, period_s: float) -> bool:
    """Whether `now` is less than `period_s` after `since`; not when the wall clock stepped back
    past it (else the view would wait for the clock to come back: an hour's step, an hour)."""
    return 0.0 <= now - since < period_s


def new_secret() -> tuple[str, str, str]:
    """Returns (full secret, id, key)."""
    token_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:_ID_LEN]
    key = secrets.token_urlsafe(_KEY_BYTES)
    return f"{PREFIX}{token_id}_{key}", token_id, key


MIN_FOREIGN_LEN = 16


def split_secret(secret: str) -> tuple[str, str] | None:
    """(id, key) of one of our secrets; None for anything else."""
    if not secret.startswith(PREFIX):
        return None
    token_id, sep, key = secret[len(PREFIX):].partition("_")
    if not sep or len(token_id) != _ID_LEN or not key:
        return None
    return token_id, key


def _unusable(secret: str) -> str:
    """Why `secret` cannot be a key. The prefix marks secrets made here, whose id is their public part;
    a chosen key in that form is refused rather than read as foreign, so a secret's form always
    says which it is (the native lane parses them the same way, csrc/gateway/tenants.cpp)."""
    if secret.startswith(PREFIX):
        return (f"an API key starting with {PREFIX!r} must be one this server made ({PREFIX}<12-character id>_<key>); "
                f"choose a key without that prefix")
    return f"an API key needs at least {MIN_FOREIGN_LEN} characters"


def check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or TENANT_NAME.fullmatch(tenant) is None:
        raise ValueError(f"a tenant name is 1 to 128 letters, digits or . _ @ : + -; got {tenant!r}")


def check_lifetime(seconds: float | None) -> None:
    if seconds is not None and not 0.0 < seconds <= MAX_LIFETIME_S:
        raise ValueError(f"a token's lifetime must be positive and at most {MAX_LIFETIME_S / 86400:.0f} days")


MAX_PATTERNS, MAX_PATTERN_CHARS = 256, 256


def check_models(patterns: list[str] | None) -> None:
    """A token's model patterns (None: every model): at most MAX_PATTERNS of at most
    MAX_PATTERN_CHARS each (every lookup of the token matches them; the lane matches each against
    its models at every push), each a pattern ModelPatterns reads."""
    if patterns is None:
        return
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} model patterns, not {len(patterns)}")
    if any(len(p) > MAX_PATTERN_CHARS for p in patterns):
        raise ValueError(f"a model pattern has at most {MAX_PATTERN_CHARS} characters")
    ModelPatterns(patterns)


def load_pepper(store: Store) -> bytes:
    env = os.environ.get(PEPPER_ENV)
    if env:
        return env.encode()
    value = store.get_meta("token_pepper") or store.set_meta_once("token_pepper", secrets.token_hex(32))
    return bytes.fromhex(value)


@dataclass(slots=True)
class CachedToken:
    record: TokenRecord
    patterns: ModelPatterns


class TokenService:
    """Owns token records; `verify` is the hot path (a dict lookup, one HMAC, one compare)."""

    def __init__(self, store: Store, clock: Clock, policy: TokenPolicy, pepper: bytes | None = None,
                 refresh_s: float = 1.0) -> None:
        self._store, self._clock, self.policy = store, clock, policy
        self._pepper = pepper if pepper is not None else load_pepper(store)
        # Keyed once; each verify copies it (a third cheaper than a one-shot HMAC, whose key setup it skips).
        self._keyed = hmac.new(self._pepper, digestmod=hashlib.sha256)
        # Every token is held in memory, so that a key's id is found, or not, without reading the
        # store: an unknown id costs what a known one does (no timing tells ids apart, no flood of
        # made-up ids turns into reads). The view is re-read when the store's count of token
        # writes moves (a trigger counts them, whoever writes): checked every refresh_s, so a
        # revocation by another process (the CLI, another gateway) takes effect within that delay,
        # and on an unknown id at most every MISS_CHECK_S, so a token just made is usable at once.
        self._refresh_s = refresh_s
        self._tokens: dict[str, CachedToken] = {}
        self._version = -1
        # Changes made through this object, and how many of them the view has read: it is re-read
        # at the next lookup when they differ.
        self._changes, self._seen = 1, 0
        self._checked_at = self._miss_checked_at = -math.inf
        self._view_lock = threading.Lock()  # one re-read at a time; lookups meanwhile wait for it
        self._rotate_lock = threading.RLock()  # rotate_if_due holds it around rotate
        # Called after each change made through this object (the native lane re-reads the tokens).
        self.listeners: list[Callable[[], None]] = []

    @property
    def pepper(self) -> bytes:
        return self._pepper

    def _changed(self) -> None:
        self._changes += 1
        for listener in self.listeners:
            listener()

    def hash_key(self, key: str) -> bytes:
        h = self._keyed.copy()
        h.update(key.encode())
        return h.digest()

    def parse(self, secret: str) -> tuple[str, str] | None:
        """(id, key) of a presented secret. A foreign secret (LLMAAS_API_KEY set by hand, not made
        by us) has no id in it: its id is derived with the pepper, so ids never leak a hash of it."""
        parts = split_secret(secret)
        if parts is None and len(secret) >= MIN_FOREIGN_LEN and not secret.startswith(PREFIX):
            derived = hmac.new(self._pepper, b"id:" + secret.encode(), hashlib.sha256).hexdigest()
            return "x" + derived[:_ID_LEN - 1], secret
        return parts

    def register(self, secret: str, tenant: str, tier: str, models: list[str] | None = None,
                 name: str = "") -> TokenRecord:
        """Stores (the hash of) a secret chosen outside, e.g. LLMAAS_API_KEY; idempotent."""
        parts = self.parse(secret)
        if parts is None:
            raise ValueError(_unusable(secret))
        token_id, key = parts
        existing = self._store.get_token(token_id)
        if existing is not None and existing.revoked_at is None:
            return existing
        record = TokenRecord(id=token_id, tenant=tenant, tier=tier, secret_hash=self.hash_key(key),
                             models=models or ["*"], name=name, created_at=self._clock.time())
        self._store.put_token(record).result()
        self._changed()
        return record

    # -- operations -------------------------------------------------------------------------------
    def create(self, tenant: str, tier: str, models: list[str] | None = None, expires_in_s: float | None = None,
               name: str = "", rotated_from: str | None = None) -> tuple[str, TokenRecord]:
        """Makes a token; returns (secret, record). The secret is shown once and never stored.
        models None allows every model; an empty list is refused (ValueError), as is an empty or
        malformed tenant name and a lifetime that is not positive or passes MAX_LIFETIME_S."""
        secret, record = self._new_token(tenant, tier, models, expires_in_s, name, rotated_from)
        self._store.put_token(record).result()
        self._changed()
        return secret, record

    def _new_token(self, tenant: str, tier: str, models: list[str] | None, expires_in_s: float | None,
                   name: str, rotated_from: str | None) -> tuple[str, TokenRecord]:
        check_tenant(tenant)
        check_lifetime(expires_in_s)
        check_models(models)  # a malformed pattern, or none, refused now
        patterns = ["*"] if models is None else models
        secret, token_id, key = new_secret()
        now = self._clock.time()
        record = TokenRecord(id=token_id, tenant=tenant, tier=tier, secret_hash=self.hash_key(key), models=patterns,
                             name=name, created_at=now, expires_at=None if expires_in_s is None else now + expires_in_s,
                             rotated_from=rotated_from)
        return secret, record

    def revoke(self, token_id: str) -> tuple[TokenRecord, bool]:
        """Revokes a token now; returns (its record, whether this call revoked it). A token revoked
        already, here or by another process, is left as it is: a retried revocation keeps the first
        one's time and gives its caller nothing to record."""
        record = self._require(token_id)
        revoked = False
        if record.revoked_at is None:
            revoked = self._store.revoke_token(token_id, self._clock.time()).result()
            # As stored: revoked by this call, or by another process since it was read.
            record = self._require(token_id)
        # The view is re-read even when another process revoked it: the key is refused here from
        # now on, as the answer says, not at the next refresh.
        self._changed()
        return record, revoked

    def rotate(self, token_id: str, grace_s: float | None = None) -> tuple[str, TokenRecord, TokenRecord]:
        """Issues a successor; the old secret stays valid for the grace period. Returns
        (new secret, new record, old record)."""
        with self._rotate_lock:
            old = self._rotatable(token_id)
            now = self._clock.time()
            grace = self.policy.grace_s if grace_s is None else grace_s
            # The successor lives as long as the old token was made to.
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            secret, new = self._new_token(old.tenant, old.tier, old.models, lifetime, old.name, rotated_from=old.id)
            old.rotated_to = new.id
            old.expires_at = now + grace if old.expires_at is None else min(old.expires_at, now + grace)
            if not self._store.rotate_token(old, new).result():
                self._rotatable(token_id)  # another process rotated or revoked it since: says which
                raise ValueError(f"token {token_id} changed while it was rotated: try again")
            self._changed()
            return secret, new, old

    def _rotatable(self, token_id: str) -> TokenRecord:
        old = self._require(token_id)
        if old.revoked_at is not None:
            raise ValueError(f"token {token_id} is revoked")
        if old.rotated_to is not None:  # its expiry is the grace now, not its lifetime
            raise ValueError(f"token {token_id} was already rotated: rotate its successor {old.rotated_to}")
        if old.expires_at is not None and self._clock.time() >= old.expires_at:
            raise ValueError(f"token {token_id} has expired: create a new one")
        return old

    def _require(self, token_id: str) -> TokenRecord:
        record = self._store.get_token(token_id)
        if record is None:
            raise KeyError(f"no token {token_id!r}")
        return record

    # -- the hot path -----------------------------------------------------------------------------
    def lookup(self, token_id: str) -> CachedToken | None:
        now = self._clock.time()
        if self._changes != self._seen or not _within(now, self._checked_at, self._refresh_s):
            self._check(now)
        cached = self._tokens.get(token_id)
        if cached is None and not _within(now, self._miss_checked_at, MISS_CHECK_S):
            self._miss_checked_at = now
            self._check(now)
            cached = self._tokens.get(token_id)
        return cached

    def _check(self, now: float) -> None:
        """Re-reads the tokens if they changed since the view was built. The view is marked current
        only once it is in place: a lookup on another thread meanwhile waits for it, instead of
        finding the old view (at start, an empty one) current and a new key unknown."""
        with self._view_lock:
            changes = self._changes
            # Read before the tokens: a write in between moves it again, so the next check re-reads.
            version = self._store.tokens_version()
            if changes != self._seen or version != self._version:
                old = self._tokens
                tokens: dict[str, CachedToken] = {}
                for record in self._store.list_tokens():
                    cached = old.get(record.id)
                    if cached is None or cached.record != record:  # unchanged ones keep their object (and patterns)
                        try:
                            cached = CachedToken(record, ModelPatterns(record.models))
                        except ValueError as exc:  # a record no CLI would write: its key alone is refused
                            log.warning("token %s is refused: its models are unusable (%s)", record.id, exc)
                            continue
                    tokens[record.id] = cached
                self._tokens, self._version, self._seen = tokens, version, changes
            self._checked_at = now

    def verify(self, secret: str) -> CachedToken:
        """The token of a presented secret, or AuthenticationError (one message for every failure
        but expiry and revocation, so a prober learns nothing about which ids exist)."""
        parts = self.parse(secret)
        if parts is None:
            raise AuthenticationError("Incorrect API key provided.")
        token_id, key = parts
        cached = self.lookup(token_id)
        # Hash and compare even for an unknown id, so both paths cost the same.
        digest = self.hash_key(key)
        expected = cached.record.secret_hash if cached is not None else b"\0" * 32
        if not hmac.compare_digest(digest, expected) or cached is None:
            raise AuthenticationError("Incorrect API key provided.")
        record = cached.record
        now = self._clock.time()
        if record.revoked_at is not None and record.revoked_at <= now:
            raise AuthenticationError("This API key has been revoked.")
        if record.expires_at is not None and now >= record.expires_at:
            raise AuthenticationError("This API key has expired.")
        return cached

    def due_for_rotation(self, record: TokenRecord) -> bool:
        max_age = self.policy.max_age_s
        return max_age > 0 and record.rotated_to is None and self._clock.time() - record.created_at >= max_age

    def rotate_if_due(self, record: TokenRecord) -> tuple[str, TokenRecord, TokenRecord] | None:
        """The automatic rotation: at most one successor even when requests race past max age
        (the losers see the rotation as already done)."""
        with self._rotate_lock:
            current = self._store.get_token(record.id)
            if current is None or not self.due_for_rotation(current):
                return None
            try:
                return self.rotate(record.id)
            except ValueError:  # another process (a gateway sharing the database) rotated it first
                return None
