"""Delivery of alert events to a webhook: one POST of the event as JSON, retried a few times.

Runs in a worker thread (urllib: http and https, no extra dependency), so a slow receiver never
stalls the event loop; failures are logged and counted, never raised into the evaluator.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request

import msgspec

from gateway.alerts.events import AlertEvent

log = logging.getLogger(__name__)
_ENC = msgspec.json.Encoder()


class Webhook:
    def __init__(self, url: str, timeout_s: float = 5.0, attempts: int = 3, backoff_s: float = 0.5) -> None:
        self.url, self.timeout_s, self.attempts, self.backoff_s = url, timeout_s, attempts, backoff_s
        self.delivered = 0
        self.failed = 0

    def _post(self, body: bytes) -> int:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"content-type": "application/json", "user-agent": "llmaas-alerts"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return int(response.status)

    async def send(self, event: AlertEvent) -> bool:
        body = _ENC.encode(event)
        for attempt in range(self.attempts):
            try:
                status = await asyncio.to_thread(self._post, body)
                if status < 300:
                    self.delivered += 1
                    return True
            except Exception as exc:  # urllib raises HTTPError for >= 400, URLError, timeouts...
                log.warning("alert webhook %s: %s (attempt %d)", self.url, exc, attempt + 1)
            await asyncio.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        return False
