"""Per-tenant memory of recent prompts, bounded in tenants and in prompts per tenant.

Only what the behaviour layer needs is kept: a hash of the last prompt with its run length (the
same prompt N times in a row) and the folded tails of the last few prompts (an attack split over
requests is matched on their joined text). Least recently seen tenants are evicted first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _TenantState:
    tails: deque[str]
    last_digest: int | None = None
    repeats: int = 0


@dataclass(slots=True)
class History:
    max_tenants: int = 10_000
    prompts_per_tenant: int = 3
    tail_chars: int = 240
    _tenants: OrderedDict[str, _TenantState] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def window(self, tenant: str) -> str:
        """The joined tails of the tenant's previous prompts, oldest first ("" if none)."""
        with self._lock:
            state = self._tenants.get(tenant)
            return " ".join(state.tails) if state is not None else ""

    def record(self, tenant: str, digest: int, folded: str) -> int:
        """Remember one prompt; returns how many times in a row this same prompt has been seen."""
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None:
                state = _TenantState(tails=deque(maxlen=self.prompts_per_tenant))
                self._tenants[tenant] = state
                while len(self._tenants) > self.max_tenants:
                    self._tenants.popitem(last=False)
            else:
                self._tenants.move_to_end(tenant)
            state.repeats = state.repeats + 1 if digest == state.last_digest else 1
            state.last_digest = digest
            state.tails.append(folded[-self.tail_chars:])
            return state.repeats

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._tenants.pop(tenant, None)

    def __len__(self) -> int:
        return len(self._tenants)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants
