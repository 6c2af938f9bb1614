"""The stage that feeds the alert rules and the console's graphs: every finished exchange lands in
a per-minute bucket of its (tenant, model) series.

Put it right after the metrics stage: it then sees every admitted request end, refusals included,
and reads the tenant from `exchange.state["principal"]` when the tenancy stage got that far.
Memory is bounded: `retention_minutes` buckets per series and at most `max_series` series; past
the cap, new pairs are counted under the model `other`. Given the gateway's models, every other
name a request gives is counted as `other` too: a client inventing model names (refused, without
a key even) can neither grow the recorder nor fill its cap before the real models' series.
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.alerts.series import MinuteBucket, Series, bin_of
from gateway.tenancy.clock import Clock, SystemClock

if TYPE_CHECKING:  # the gateway's config may import this package: no import of the fleet here
    from gateway.fleet.exchange import Exchange, FinishedBatch

OVERFLOW = "other"
# The all-tenants series of each model, kept beside the per-tenant ones: the admin's graphs and
# the alert rules then read one series per model, not one per tenant and model (1000 tenants'
# 3-hour graphs: ~5 ms instead of ~500 ms). No tenant name holds a NUL.
ALL = "\x00all"
# Past the cap, new pairs are counted under this tenant (invisible to every tenant viewer; a real
# tenant called "other" must not see others' requests) and the model `other` (seen by the admin).
OVERFLOW_TENANT = "\x00overflow"


class Recorder:
    def __init__(self, clock: Clock | None = None, retention_minutes: int = 180, max_series: int = 2048,
                 models: Iterable[str] | None = None) -> None:
        """models: the names that get series of their own (None: any name)."""
        self.clock = clock or SystemClock()
        self.retention = retention_minutes
        self.max_series = max_series
        self._models = frozenset(models) if models is not None else None
        self._series: dict[tuple[str, str], Series] = {}

    async def admit(self, exchange: Exchange) -> None:
        return None

    def finish(self, exchange: Exchange) -> None:
        principal = exchange.state.get("principal")
        tenant = principal.tenant if principal is not None else ""
        ttft = exchange.first_byte - exchange.started if exchange.first_byte is not None else None
        e2e = time.monotonic() - exchange.started
        usage = exchange.usage
        self.observe(tenant, exchange.model, exchange.status, ttft, e2e,
                     usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                     usage.reasoning_tokens if usage else 0)

    def observe(self, tenant: str, model: str, status: int, ttft_s: float | None, e2e_s: float,
                prompt_tokens: int = 0, completion_tokens: int = 0, reasoning_tokens: int = 0) -> None:
        minute = int(self.clock.time() // 60)
        model = self._named(model)
        ttft_bin = bin_of(ttft_s) if ttft_s is not None else None
        e2e_bin = bin_of(e2e_s) if status < 400 else None  # a refusal's few microseconds would flatter the latency
        for key in ((tenant, model), (ALL, model)):
            b = self._bucket(key, minute)
            b.requests += 1
            if status >= 500:
                b.server_errors += 1
            elif status >= 400:
                b.client_errors += 1
            b.prompt_tokens += prompt_tokens
            b.completion_tokens += completion_tokens
            b.reasoning_tokens += reasoning_tokens
            if ttft_bin is not None:
                b.ttft.add(ttft_bin)
            if e2e_bin is not None:
                b.e2e.add(e2e_bin)

    def finish_batch(self, batch: FinishedBatch) -> None:
        """The native lane's requests (their tenant is "" when the tenant stages are off)."""
        minute = int(self.clock.time() // 60)
        ttft_bins = Counter(map(bin_of, batch.ttft_s))
        e2e_bins = Counter(map(bin_of, batch.e2e_s)) if batch.status < 400 else None
        model = self._named(batch.model)
        for key in ((batch.tenant, model), (ALL, model)):
            b = self._bucket(key, minute)
            b.requests += batch.count
            if batch.status >= 500:
                b.server_errors += batch.count
            elif batch.status >= 400:
                b.client_errors += batch.count
            b.prompt_tokens += batch.prompt_tokens
            b.completion_tokens += batch.completion_tokens
            b.reasoning_tokens += batch.reasoning_tokens
            for index, n in ttft_bins.items():
                b.ttft.add(index, n)
            if e2e_bins is not None:
                for index, n in e2e_bins.items():
                    b.e2e.add(index, n)

    def _named(self, model: str) -> str:
        return model if self._models is None or model in self._models else OVERFLOW

    def _bucket(self, key: tuple[str, str], minute: int) -> MinuteBucket:
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                key = (key[0] if key[0] == ALL else OVERFLOW_TENANT, OVERFLOW)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(self.retention)
        return series.bucket(minute)

    # -- queries ----------------------------------------------------------------------------------
    def models(self, tenant: str | None = None) -> list[str]:
        wanted = ALL if tenant is None else tenant
        return sorted({m for (t, m) in self._series if t == wanted})

    def _matching(self, tenant: str | None, model: str | None) -> Iterable[tuple[str, Series]]:
        wanted = ALL if tenant is None else tenant
        for (t, m), series in list(self._series.items()):
            if t != wanted:
                continue
            if model is not None and not fnmatch.fnmatchcase(m, model):
                continue
            yield m, series

    def window(self, seconds: float, model: str | None = None, tenant: str | None = None) -> dict[str, MinuteBucket]:
        """Per model (matching the glob `model`), the merged buckets of the last `seconds`, the
        current minute included; `tenant` None: all tenants."""
        now = int(self.clock.time() // 60)
        first = now - max(1, int(-(-seconds // 60))) + 1
        merged: dict[str, MinuteBucket] = {}
        for m, series in self._matching(tenant, model):
            for b in series.between(first, now):
                merged.setdefault(m, MinuteBucket(now)).merge(b)
        return merged

    def per_minute(self, minutes: int, tenant: str | None = None) -> dict[str, list[MinuteBucket]]:
        """Per model, the bucket of each of the last `minutes` (empty minutes included, so graphs
        show gaps as zero traffic), oldest first. The buckets are the live ones: read, not kept."""
        now = int(self.clock.time() // 60)
        first = now - minutes + 1
        out = {}
        for m, series in self._matching(tenant, None):  # one series per model for a given tenant
            slots = {b.minute: b for b in series.between(first, now)}
            out[m] = [slots.get(t) or MinuteBucket(t) for t in range(first, now + 1)]
        return out
