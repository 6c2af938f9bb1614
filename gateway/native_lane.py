"""The gateway's native lane: its hot path served by an epoll thread (csrc/gateway, `gateway._native`),
with the Python server behind it for everything else.

The lane accepts on the gateway's listening socket and answers non-streaming chat and completions
requests itself: it parses them, picks a host by the fleet's rule, forwards them over its own pooled
connections, retries before the answer, and relays the answer, without running the interpreter.
Any other request (another route, a stream, a body it does not read exactly as the Python path
would, a model it does not serve, every host failing) hands the connection, with the bytes read so
far, to the Python server below, which owns it from then on and answers, errors included.

Python keeps what is Python's: the fleet's health probes and circuit breaker, and the stages that
see each request end (metrics, the console's recorder). Every tick this module tells the lane the
hosts' health and load (and, every RESOLVE_S, where their names now resolve), and tells the stages
and the breaker what the lane did since (finished requests, host failures). The tenant stages run on the lane itself (gateway/lane_tenancy.py: the
lane serves what they admit and hands the rest over); the prompt-security stage does not, so with
it on, or with TLS, the Python server serves every request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from gateway.fleet.backend import HttpBackend
from gateway.fleet.config import GatewayConfig
from gateway.fleet.errors import retry_after_s
from gateway.fleet.exchange import BatchStage, FinishedBatch
from gateway.fleet.fleet import Fleet
from gateway.fleet.host import HostState
from gateway.http.app import encode_response, error_response
from gateway.http.limits import ServerLimits, ServerState
from gateway.http.protocol import ConnectionCount, HttpConnection
from gateway.lane_tenancy import LaneTenancy
from gateway.lane_tenancy import unavailable as tenancy_unavailable
from gateway.stages.tenancy_stage import TenancyStage

try:
    from gateway import _native
except ImportError:  # not built (a source checkout without its extension): the Python server serves
    _native = None

log = logging.getLogger(__name__)

_TICK_S = 0.05
# How often the lane's hosts' names are resolved again (as Envoy's default DNS refresh): the lane
# connects by address, and an engine behind a name (a Kubernetes service, a DNS failover) moves.
RESOLVE_S = 5.0


def unavailable(config: GatewayConfig, fleet: Fleet, tenancy: TenancyStage | None = None) -> str | None:
    """Why the lane cannot serve this gateway, or None when it can."""
    if not config.server.native_lane:
        return "turned off ([server] native_lane = false)"
    if _native is None:
        return "gateway._native is not built"
    if config.server.certfile:
        return "TLS is served by the Python server"
    if config.security.enabled:
        return "the prompt-security stage sees each request before it is routed"
    if tenancy is not None and (why := tenancy_unavailable(tenancy.tenancy)) is not None:
        return f"the tenant stages cannot run on it: {why}"
    if not all(isinstance(host.backend, HttpBackend) for host in fleet.hosts.values()):
        return "an engine is served in process"
    for host in fleet.hosts.values():
        if _address(host) is None:  # the lane connects by address: the Python server resolves at each connect
            return f"{host.name} does not resolve"
    return None


def _address(host: HostState) -> str | None:
    """The first address a host's name resolves to, or None."""
    assert isinstance(host.backend, HttpBackend)
    name, port = host.backend.address
    try:
        return str(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][4][0])
    except OSError:
        return None


class _HandedOver(HttpConnection):
    """A connection the lane handed over: the bytes it read are parsed first, before any new ones."""

    def __init__(self, state: ServerState, count: ConnectionCount | None, data: bytes) -> None:
        super().__init__(state, count)
        self._handed_over = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        data, self._handed_over = self._handed_over, b""
        if data:
            self.data_received(data)


def _plane_config(sock: socket.socket, limits: ServerLimits, config: GatewayConfig) -> dict[str, Any]:
    routing = config.routing
    overload = error_response(503, "Server is overloaded, retry later", "server_overloaded", type_="server_error")
    return {
        "listen_fd": sock.fileno(),
        "max_header_bytes": limits.max_header_bytes,
        "max_body_bytes": limits.max_body_bytes,
        "header_timeout_s": limits.header_timeout_s,
        "body_timeout_s": limits.body_timeout_s,
        "keepalive_timeout_s": limits.keepalive_timeout_s,
        "send_timeout_s": limits.send_timeout_s,
        "max_concurrency": limits.max_concurrency,
        "connect_timeout_s": routing.connect_timeout_s,
        "first_byte_timeout_s": routing.first_byte_timeout_s,
        "max_attempts": routing.max_attempts,
        "unavailable_headers": f"retry-after: {retry_after_s(routing.health_interval_s)}\r\n",
        "failure_threshold": routing.failure_threshold,
        "default_max_tokens": routing.default_max_tokens,
        "affinity_min_chars": routing.affinity_min_chars,
        "slack_ratio": routing.affinity_slack_ratio,
        "slack_tokens": routing.affinity_slack_tokens,
        "id_prefix": f"{os.urandom(6).hex()}-n",
        # The Python server's own answers (protocol.py, cycle.py), so both paths answer alike.
        "header_timeout_response": encode_response(error_response(408, "Request headers not received in time",
                                                         "request_timeout"), False),
        "body_timeout_response": encode_response(error_response(408, "Request body not received in time",
                                                       "request_timeout"), False),
        "overload_response": encode_response(overload, True),
        "overload_close_response": encode_response(overload, False),
        "reasons": {status.value: status.phrase for status in HTTPStatus},
    }


class NativeLane:
    """The lane of one listening socket, and the Python server state for what it hands over."""

    def __init__(self, sock: socket.socket, state: ServerState, connections: ConnectionCount | None,
                 config: GatewayConfig, fleet: Fleet, stages: list[BatchStage],
                 tenancy: TenancyStage | None = None, on_handoffs: Callable[[int], None] | None = None) -> None:
        """on_handoffs: told, each sync, how many connections the lane handed over since the last."""
        assert _native is not None
        self._sock = sock
        self._state = state
        self._connections = connections
        self._fleet = fleet
        self._stages = list(reversed(stages))  # ended in the reverse order of admission, as in proxy.py
        self._plane = _native.DataPlane(_plane_config(sock, state.limits, config))
        self._hosts: list[HostState] = []
        self._ips: list[str] = []  # where the lane connects to each host, by its index
        index: dict[str, int] = {}
        for host in fleet.hosts.values():
            assert isinstance(host.backend, HttpBackend)
            name, port = host.backend.address
            ip = _address(host)
            assert ip is not None  # unavailable() checked it
            index[host.name] = self._plane.add_host(host.name, f"{name}:{port}", ip, port,
                                                    abortable=host.kind == "llmaas",
                                                    authorization=host.backend.authorization or "")
            assert index[host.name] == len(self._hosts)
            self._hosts.append(host)
            self._ips.append(ip)
        for model, hosts in fleet.by_model.items():
            self._plane.add_model(model, [index[h.name] for h in hosts])
        self._tenancy = LaneTenancy(tenancy, self._plane, list(fleet.by_model)) if tenancy is not None else None
        self._on_handoffs = on_handoffs
        self._handoffs_told = 0
        self._loop = asyncio.get_running_loop()
        self._adopting: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._recording: asyncio.Task[None] | None = None  # the worker thread's commit in flight
        self._resolving: asyncio.Task[None] | None = None
        self._resolved_at = time.monotonic()
        self._stopped = False
        if connections is not None:
            connections.native = lambda: int(self._plane.open_connections)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def tenancy(self) -> LaneTenancy | None:
        return self._tenancy

    @property
    def handed_off(self) -> int:
        """Connections the lane has handed to the Python server so far."""
        return int(self._plane.handed_off)

    @property
    def in_flight(self) -> int:
        return self._state.in_flight + int(self._plane.in_flight)

    def start(self) -> None:
        self.sync()
        self._loop.add_reader(self._plane.wake_fd, self._adopt_handed_over)
        self._plane.start()
        self._timer = self._loop.call_later(_TICK_S, self._tick)

    def sync(self, record: bool = False) -> None:
        """Exchanges state with the lane: health and load out; finished requests and failures in.
        record: the lane's ledger rows committed first, on this thread. Not by default: the ticks
        commit them on a worker thread, and a metrics scrape (this, as the gateway's refresh) would
        stall the loop for as long as another writer holds the database (twice the busy timeout)."""
        plane, threshold = self._plane, self._fleet.routing.failure_threshold
        for index, failed, error in plane.take_host_events():
            host = self._hosts[index]
            if failed:
                host.record_failure(error, threshold)
            else:
                host.record_success()
        for i, host in enumerate(self._hosts):
            plane.set_host_health(i, host.healthy)
            plane.set_host_report(i, host.report.num_pending_tokens if host.report is not None else 0)
            plane.set_python_outstanding(i, host.outstanding_tokens)
            host.lane_outstanding_tokens = plane.host_outstanding(i)
            host.lane_in_flight = plane.host_in_flight(i)
        if self._tenancy is not None:
            if record:
                self._tenancy.record()  # the usage rows first: what is finished is in the ledger
            self._tenancy.sync()
        for finished in plane.take_finished():
            self._finish(*finished)
        handed_off = int(plane.handed_off)
        if self._on_handoffs is not None and handed_off > self._handoffs_told:
            self._on_handoffs(handed_off - self._handoffs_told)
        self._handoffs_told = handed_off

    def _finish(self, model: str, host: int, status: int, count: int, retries: int, with_usage: int,
                prompt: int, cached: int, completion: int, reasoning: int, ttft: bytes, e2e: bytes,
                limit_index: int, cost_eur: float) -> None:
        tenant, tier = self._tenancy.names(limit_index) if self._tenancy is not None else ("", "")
        batch = FinishedBatch(model=model, host=self._hosts[host].name, status=status, count=count, retries=retries,
                              with_usage=with_usage, prompt_tokens=prompt, cached_tokens=cached,
                              completion_tokens=completion, reasoning_tokens=reasoning,
                              ttft_s=memoryview(ttft).cast("d"), e2e_s=memoryview(e2e).cast("d"),
                              tenant=tenant, tier=tier, cost_eur=cost_eur)
        for stage in self._stages:
            stage.finish_batch(batch)

    def _tick(self) -> None:
        # The commit goes on beside the ticks, not before them: a database locked by another writer
        # holds it up to the lane's busy timeout (2 s), and a revocation must reach the lane, and
        # the hosts' health the lane and the breaker, within a tick or a second meanwhile.
        try:
            self.sync(record=False)
        except Exception:  # a stage's bug must not stop the lane's bookkeeping
            log.exception("native lane sync failed")
        if self._tenancy is not None and self._recording is None:
            self._recording = self._loop.create_task(self._record(self._tenancy))
        if self._resolving is None and time.monotonic() - self._resolved_at >= RESOLVE_S:
            self._resolving = self._loop.create_task(self._resolve())
        if not self._stopped:
            self._timer = self._loop.call_later(_TICK_S, self._tick)

    async def _record(self, tenancy: LaneTenancy) -> None:
        try:
            await asyncio.to_thread(tenancy.record)
        except Exception:
            log.exception("native lane ledger commit failed")
        finally:
            self._recording = None

    async def _resolve(self) -> None:
        """Each host's name resolved again; a new first address takes over from the lane's next
        connection to it. A name that does not resolve now keeps the address it had."""
        try:
            for index, host in enumerate(self._hosts):
                assert isinstance(host.backend, HttpBackend)
                name, port = host.backend.address
                try:
                    infos = await self._loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    log.debug("%s: %s does not resolve now (%s); the lane keeps %s", host.name, name, exc,
                              self._ips[index])
                    continue
                ip = str(infos[0][4][0])
                if ip != self._ips[index]:
                    log.info("%s: %s now resolves to %s (was %s)", host.name, name, ip, self._ips[index])
                    self._plane.set_host_ip(index, ip, port)
                    self._ips[index] = ip
        finally:
            self._resolved_at = time.monotonic()
            self._resolving = None

    def _adopt_handed_over(self) -> None:
        for fd, data in self._plane.take_handoffs():
            sock = socket.socket(fileno=fd)
            if self._state.shutting_down:
                sock.close()
                continue
            task = self._loop.create_task(self._adopt(sock, data))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, sock: socket.socket, data: bytes) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: _HandedOver(self._state, self._connections, data), sock)
        except OSError:
            sock.close()

    async def shutdown(self, deadline_s: float) -> None:
        """Stop accepting; let answers in progress, on both sides, finish until the deadline."""
        state = self._state
        self._plane.begin_shutdown()
        state.begin_shutdown()
        deadline = time.monotonic() + deadline_s
        while (state.connections or self._plane.open_connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if state.connections:
            state.cut_streams()  # an SSE stream ends with an error event, then the stragglers go
            end = time.monotonic() + 1.0
            while state.connections and time.monotonic() < end:
                await asyncio.sleep(0.01)
        state.abort_connections()
        await asyncio.to_thread(self._plane.stop)
        self._loop.remove_reader(self._plane.wake_fd)
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._resolving is not None:
            self._resolving.cancel()
        if self._recording is not None:
            await self._recording  # a tick's commit in flight ends before the last one
        self.sync()  # what the lane finished last still reaches the stages
        if self._tenancy is not None:
            self._tenancy.close()  # and is recorded
        self._sock.close()
