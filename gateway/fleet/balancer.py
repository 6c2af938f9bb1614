"""Which host gets a request: the least loaded healthy one, or the one that has its prefix cached.

Load is outstanding tokens (prompt estimate + max output tokens of requests in flight, corrected by
the host's own load report). Prefix affinity uses rendezvous hashing: each (prefix key, host) pair
gets a stable score and the best-scoring host is the prefix's home, so every gateway agrees on it
without sharing state, and a host leaving moves only the prefixes it was home to. A home that is
much busier than the least loaded host is passed over: a cache hit does not pay for a long queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from gateway.fleet.host import HostState


def prefix_key(text: str, min_chars: int) -> bytes | None:
    """A stable key for a prompt prefix at least min_chars long, else None (nothing worth pinning)."""
    if len(text) < min_chars:
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _rendezvous(key: bytes, host: HostState) -> bytes:
    return hashlib.blake2b(key + host.name.encode(), digest_size=8).digest()


def pick_host(hosts: Iterable[HostState], key: bytes | None, slack_ratio: float, slack_tokens: int,
              exclude: set[str] = frozenset()) -> HostState | None:  # type: ignore[assignment]
    candidates = [h for h in hosts if h.healthy and h.name not in exclude]
    if not candidates:
        return None
    # Ties (an idle fleet) go round-robin by how often each host was picked.
    least = min(candidates, key=lambda h: (h.load_tokens(), h.picks))
    if key is None:
        return least
    home = max(candidates, key=lambda h: _rendezvous(key, h))
    if home.load_tokens() <= least.load_tokens() * slack_ratio + slack_tokens:
        return home
    return least
