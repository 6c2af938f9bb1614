"""Drops prompt text past its retention period while a gateway runs.

The audit trail keeps prompt text (encrypted) only under a retention policy, and `AuditTrail.purge`
drops what is older than the period. `Tenancy.open` purges once; a gateway that runs for months
runs this loop too, so that no text outlives its period by more than one interval. A purge is one
UPDATE on an index of the records that still hold text, run in a worker thread: the event loop
never waits on its commit.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.tenancy.audit import AuditTrail

# A purge every tenth of the retention period, so that text outlives it by a tenth at most; but at
# most an hour apart (a 90-day retention: text gone within the hour its period ends), and at least a
# minute apart (shorter retentions are trials, not worth a commit every few seconds).
RETENTION_FRACTION = 0.1
MIN_INTERVAL_S, MAX_INTERVAL_S = 60.0, 3600.0
log = logging.getLogger(__name__)


def purge_interval(retention_s: float) -> float:
    """Seconds between two purges under a retention of `retention_s`."""
    return min(max(retention_s * RETENTION_FRACTION, MIN_INTERVAL_S), MAX_INTERVAL_S)


class PromptPurger:
    """Runs `audit.purge` every `interval_s` (default: `purge_interval` of its retention) between
    `start` and `stop`. A failed purge (a database locked or full) is logged and tried again at the
    next interval: the gateway serves on."""

    def __init__(self, audit: AuditTrail, interval_s: float | None = None) -> None:
        assert audit.retention_s, "prompt text is kept, and purged, only under a retention period"
        self.audit = audit
        self.interval_s = purge_interval(audit.retention_s) if interval_s is None else interval_s
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop on the running event loop (call from the gateway's start)."""
        if self._task is None:
            self._stopping = asyncio.Event()  # made here: an event belongs to the loop that first waits on it
            self._task = asyncio.get_running_loop().create_task(self._run(self._stopping))

    async def stop(self) -> None:
        """Ends the loop. A purge under way finishes first (a cancelled wait would leave its thread
        writing), so that none reaches the store once the gateway closes it."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            await self._task
            self._task = self._stopping = None

    async def _run(self, stopping: asyncio.Event) -> None:
        while not await _set_within(stopping, self.interval_s):
            await self._purge()

    async def _purge(self) -> None:
        try:
            purged = await asyncio.to_thread(self.audit.purge)
        except Exception:  # the store's error, whichever: the next interval tries again
            log.exception("purging prompt text past its retention failed; trying again in %.0f s", self.interval_s)
            return
        if purged:
            log.info("purged the text of %d prompt(s) past their retention period", purged)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
