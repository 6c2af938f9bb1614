"""Health probes: each host's load report, taken out on failure and probed back in."""

from __future__ import annotations

import asyncio

import msgspec

from gateway.fleet.host import HostState, LoadReport

_REPORT = msgspec.json.Decoder(LoadReport)


async def probe(host: HostState, timeout_s: float, slow_threshold: int = 2) -> None:
    """One probe: /internal/load for our engines, /health for other OpenAI servers."""
    path = "/internal/load" if host.kind == "llmaas" else "/health"
    response = None
    try:
        response = await asyncio.wait_for(host.backend.request("GET", path), timeout_s)
        body = await asyncio.wait_for(response.read(), timeout_s)
        if response.status != 200:
            host.record_probe(None, f"{path} answered {response.status}")
            return
        host.record_probe(_REPORT.decode(body) if host.kind == "llmaas" else None, None)
    except asyncio.TimeoutError:
        host.record_probe(None, f"{path} took over {timeout_s:g} s", slow_threshold)
    except Exception as exc:  # refused, reset, garbled: the host is not fit to serve
        host.record_probe(None, f"{path} failed: {exc!r}")
    finally:
        if response is not None:
            response.close()


async def probe_forever(hosts: list[HostState], interval_s: float, timeout_s: float) -> None:
    """Each host on a schedule of its own: one that answers its probe late (a frozen engine holds it
    for timeout_s) never delays another's return to service."""
    await asyncio.gather(*(_probe_host_forever(h, interval_s, timeout_s) for h in hosts))


async def _probe_host_forever(host: HostState, interval_s: float, timeout_s: float) -> None:
    task = asyncio.current_task()
    assert task is not None
    while True:
        await asyncio.sleep(interval_s)
        await probe(host, timeout_s)
        if task.cancelling():
            # Python 3.11's wait_for drops a cancellation that arrives as its awaitable completes:
            # the probe then returns, and without this the loop would run on and the stop wait for ever.
            raise asyncio.CancelledError
