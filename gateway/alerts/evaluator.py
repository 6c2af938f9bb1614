"""Evaluates the alert rules on a timer: pending -> firing after `for_s` -> resolved.

An instance (rule + labels) whose reading breaches the threshold becomes pending; once it has
breached at every evaluation for `for_s` seconds it fires (an event, recorded and sent to the
webhook). It resolves at the first evaluation where it no longer breaches, or gives no reading.
Time is read from an injectable clock, and `evaluate()` is one tick, so tests drive it directly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.alerts.config import AlertRule, AlertsSection
from gateway.alerts.events import AlertEvent, EventLog
from gateway.alerts.rules import Reading, Sources, measure
from gateway.alerts.webhook import Webhook
from gateway.tenancy.clock import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Instance:
    since: float
    value: float
    fired: AlertEvent | None = None  # the firing event, while it fires

    @property
    def firing(self) -> bool:
        return self.fired is not None


def _event_id(rule: AlertRule, labels: tuple[tuple[str, str], ...]) -> str:
    return rule.name + "".join(f"|{k}={v}" for k, v in labels)


class AlertEvaluator:
    def __init__(self, config: AlertsSection, sources: Sources, clock: Clock | None = None,
                 log_: EventLog | None = None) -> None:
        self.config = config
        self.sources = sources
        self.clock = clock or SystemClock()
        self.log = log_ or EventLog(config.history_size, config.history_file)
        self.webhook = Webhook(config.webhook, config.webhook_timeout_s) if config.webhook else None
        self._instances: dict[tuple[str, tuple[tuple[str, str], ...]], _Instance] = {}
        # Alerts left firing by the previous run are taken up again: their resolution will show.
        for e in self.log.active():
            rule_labels = tuple(sorted(e.labels.items()))
            self._instances[(e.rule, rule_labels)] = _Instance(e.since, e.value, fired=e)
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[AlertEvent] | None = None
        self._sender: asyncio.Task[None] | None = None

    def evaluate(self) -> list[AlertEvent]:
        """One tick: reads every rule, returns (and records, and sends) the events it decided."""
        now = self.clock.time()
        events: list[AlertEvent] = []
        for rule in self.config.rules:
            try:
                readings = measure(rule, self.sources)
            except Exception:  # a broken source must not silence the other rules
                log.exception("alert rule %s could not be evaluated", rule.name)
                continue
            events.extend(self._apply(rule, readings, now))
        for event in events:
            self.log.append(event)
            if self.webhook is not None:
                self._send(event)
        return events

    def _apply(self, rule: AlertRule, readings: list[Reading], now: float) -> list[AlertEvent]:
        events = []
        breaching = set()
        for r in readings:
            if r.value <= rule.threshold:
                continue
            key = (rule.name, r.labels)
            breaching.add(key)
            inst = self._instances.get(key)
            if inst is None:
                inst = self._instances[key] = _Instance(since=now, value=r.value)
            inst.value = r.value
            if not inst.firing and now - inst.since >= rule.for_s:
                inst.fired = self._event(rule, r.labels, inst, "firing", now)
                events.append(inst.fired)
        for key in [k for k in self._instances if k[0] == rule.name and k not in breaching]:
            inst = self._instances.pop(key)
            if inst.firing:
                events.append(self._event(rule, key[1], inst, "resolved", now))
        return events

    @staticmethod
    def _event(rule: AlertRule, labels: tuple[tuple[str, str], ...], inst: _Instance, state: str,
               now: float) -> AlertEvent:
        return AlertEvent(id=_event_id(rule, labels), rule=rule.name, kind=rule.kind, state=state,
                          severity=rule.severity, labels=dict(labels), value=inst.value, threshold=rule.threshold,
                          since=inst.since, time=now, summary=rule.summary)

    def _send(self, event: AlertEvent) -> None:
        """Queues the event for the one delivery task: the receiver sees events in order (a
        firing retried after a 502 still arrives before its resolution)."""
        assert self.webhook is not None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # evaluated outside a loop (a CLI): deliver in place
            asyncio.run(self.webhook.send(event))
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait(event)
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._deliver(self._queue))

    async def _deliver(self, queue: asyncio.Queue[AlertEvent]) -> None:
        assert self.webhook is not None
        while True:
            event = await queue.get()
            try:
                await self.webhook.send(event)
            finally:
                queue.task_done()

    def active(self) -> list[AlertEvent]:
        """The firing event of each alert firing now (from the evaluator's state, not the bounded
        history: an alert firing for weeks stays listed however many events came after it)."""
        return [inst.fired for inst in self._instances.values() if inst.fired is not None]

    def history(self) -> list[AlertEvent]:
        return self.log.events()

    # -- the timer --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                self.evaluate()
            except Exception:  # a full disk under the history file: keep evaluating
                log.exception("alert evaluation failed")

    def start(self) -> None:
        """Starts the timer on the running loop (call from the gateway's start)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        """Waits for the webhook deliveries in progress."""
        if self._queue is not None:
            await self._queue.join()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.drain()
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
