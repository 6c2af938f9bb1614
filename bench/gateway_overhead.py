"""What the gateway costs: `llmaas gateway` in front of an instant backend vs that backend alone.

Same run, same load generator, interleaved rounds (this machine is shared and noisy):
- throughput: non-streaming chat completions/s at a fixed concurrency, through the gateway vs
  straight to the bare httptools server (bench/instant_backend.py); goal >= 0.5. The gateway with its
  stages off serves these on its native lane (gateway/native_lane.py); the same gateway on its
  Python server alone (`native_lane = false`) is measured beside it;
- added latency: p50 of sequential requests through the gateway minus straight; goal <= 0.5 ms;
- memory: the gateway's resident set with 1,000 open client connections; goal < 80 MB;
- the tenant stages (auth, rate limits, ledger and audit rows): a gateway with them on and prompt
  security off, served by its native lane (gateway/lane_tenancy.py); goal <= 100 us added per
  request (issue 4) against the lane with the stages off, and the serving goal (>= 0.5 of the bare
  server) kept with them on; the same gateway on its Python server alone is measured beside it;
- prompt security on top (its stage runs on the Python server, so that gateway serves every request
  there): its cost against the Python server with the stages off.

Run: `python -m bench.gateway_overhead [--requests 4000] [--concurrency 16] [--rounds 3]`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "smollm2:135m"  # in the shipped catalog, so the tenancy stage admits it
_REQUEST_BODY = b'{"model":"smollm2:135m","messages":[{"role":"user","content":"Say ok."}],"max_tokens":1}'


def request_bytes(headers: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n%b"
            b"content-length: %d\r\n\r\n%b" % (headers, len(_REQUEST_BODY), _REQUEST_BODY))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def throughput(port: int, requests: int, concurrency: int, headers: bytes = b"") -> float:
    """Completed requests per second, `concurrency` keep-alive connections each looping."""
    left = requests
    request = request_bytes(headers)

    async def worker() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            await _exchange(reader, writer, request)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start)


async def latencies(port: int, requests: int, headers: bytes = b"") -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = request_bytes(headers)
    out = []
    for _ in range(requests):
        start = time.perf_counter()
        await _exchange(reader, writer, request)
        out.append(time.perf_counter() - start)
    writer.close()
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (robust to a noisy machine, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def rss_with_connections(port: int, pid: int, connections: int) -> tuple[float, float]:
    """The gateway's RSS idle, then with `connections` keep-alive clients that each made a request."""
    idle = rss_mb(pid)
    streams = []
    for _ in range(connections):
        streams.append(await asyncio.open_connection("127.0.0.1", port))
    await asyncio.gather(*(_exchange(r, w, request_bytes(b"")) for r, w in streams))
    busy = rss_mb(pid)
    for _, writer in streams:
        writer.close()
    return idle, busy


def wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


_TIERS = """
[tiers.bench]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
concurrent_requests = 100000
max_tokens_per_request = 100000
monthly_budget_eur = 1000000000.0
priority = 1
[prices.default]
input = 0.9
cached_input = 0.9
output = 4.0
reasoning = 21.0
"""


@dataclass
class Target:
    name: str
    port: int
    pid: int
    headers: bytes = b""
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the gateway's CPU per request
    backend_cpu_us: list[float] = field(default_factory=list)


def gateway_config(folder: Path, port: int, backend_port: int, stages: bool, security: bool = True,
                   native_lane: bool = True) -> Path:
    """A gateway's config; with stages, a database of its own (a second process on one database would
    get no ledger journal, and commit each request's rows itself)."""
    path = folder / f"gateway-{port}.toml"
    text = (f'[server]\nport = {port}\nnative_lane = {str(native_lane).lower()}\n[[models]]\nname = "{MODEL}"\n'
            f'hosts = ["http://127.0.0.1:{backend_port}"]\n')
    if stages:
        text += f'[tenancy]\ndb = "{folder / f"llmaas-{port}.db"}"\ntiers = "{folder / "tiers.toml"}"\n'
    else:
        text += "[tenancy]\nenabled = false\n"
    if not (stages and security):
        text += "[security]\nenabled = false\n"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from gateway.tenancy import Tenancy

    folder = Path(tempfile.mkdtemp())
    (folder / "tiers.toml").write_text(_TIERS)
    backend_port, bare_port, full_port, tenancy_port = free_port(), free_port(), free_port(), free_port()
    python_port, tenancy_python_port = free_port(), free_port()
    tenancy = Tenancy.open(str(folder / f"llmaas-{full_port}.db"), str(folder / "tiers.toml"))
    secret, _ = tenancy.tokens.create("bench", "bench")
    tenancy.close()
    for port in (tenancy_port, tenancy_python_port):  # the same key in each
        shutil.copy(folder / f"llmaas-{full_port}.db", folder / f"llmaas-{port}.db")
    backend = subprocess.Popen([sys.executable, "-m", "bench.instant_backend", "--port", str(backend_port)])
    gateways = [subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "--config",
                                  str(gateway_config(folder, port, backend_port, stages, security))],
                                 stdout=subprocess.DEVNULL)
                for port, stages, security in ((bare_port, False, False), (full_port, True, True),
                                               (tenancy_port, True, False))]
    for port, stages in ((python_port, False), (tenancy_python_port, True)):
        gateways.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "--config",
                                          str(gateway_config(folder, port, backend_port, stages, False, False))],
                                         stdout=subprocess.DEVNULL))
    auth = f"authorization: Bearer {secret}\r\n".encode()
    targets = [Target("bare httptools server", backend_port, backend.pid),
               Target("gateway, stages off (native lane)", bare_port, gateways[0].pid),
               Target("gateway, stages off, Python server only", python_port, gateways[3].pid),
               Target("gateway, auth + limits + ledger + audit + security (Python server)", full_port,
                      gateways[1].pid, auth),
               Target("gateway, auth + limits + ledger + audit (native lane)", tenancy_port, gateways[2].pid, auth),
               Target("gateway, auth + limits + ledger + audit, Python server only", tenancy_python_port,
                      gateways[4].pid, auth)]
    load_before = os.getloadavg()
    try:
        for port in (backend_port, bare_port, full_port, tenancy_port, python_port, tenancy_python_port):
            wait_port(port)
        import uvloop

        for _ in range(args.rounds):
            for t in targets:
                before, backend_before = cpu_s(t.pid), cpu_s(backend.pid)
                t.rps.append(uvloop.run(throughput(t.port, args.requests, args.concurrency, t.headers)))
                t.cpu_us.append((cpu_s(t.pid) - before) / args.requests * 1e6)
                t.backend_cpu_us.append((cpu_s(backend.pid) - backend_before) / args.requests * 1e6)
                t.p50_ms.append(statistics.median(uvloop.run(latencies(t.port, args.latency_requests, t.headers))) * 1e3)
        idle, busy = uvloop.run(rss_with_connections(bare_port, gateways[0].pid, args.connections))
    finally:
        for proc in (backend, *gateways):
            proc.kill()
            proc.wait()
    med = statistics.median
    direct, bare, python_only, full, tenancy_only, tenancy_python = targets
    load = " / ".join(f"{a:.2f}" for a in (*load_before[:1], *os.getloadavg()[:1]))
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (before / after); rounds: {args.rounds}; "
          f"concurrency {args.concurrency}; {args.requests} requests per throughput run, "
          f"{args.latency_requests} sequential for latency")
    print("| path | chat completions/s | p50 latency (ms) | CPU us per request (that process) |\n|---|---|---|---|")
    for t in targets:
        print(f"| {t.name} | {med(t.rps):.0f} | {med(t.p50_ms):.3f} | {med(t.cpu_us):.0f} |")
    print(f"gateway (stages off) / bare server: throughput {med(bare.rps) / med(direct.rps):.2f} (goal >= 0.5), "
          f"added p50 {med(bare.p50_ms) - med(direct.p50_ms):.3f} ms (goal <= 0.5)")
    print(f"gateway on its Python server only / bare server: throughput {med(python_only.rps) / med(direct.rps):.2f}, "
          f"added p50 {med(python_only.p50_ms) - med(direct.p50_ms):.3f} ms")
    print(f"gateway with the tenant stages (native lane) / bare server: throughput "
          f"{med(tenancy_only.rps) / med(direct.rps):.2f} (goal >= 0.5); on the Python server only: "
          f"{med(tenancy_python.rps) / med(direct.rps):.2f}")
    # Each pipeline against the same path with its stages off.
    print(f"tenant stages (auth, limits, ledger, audit) on the lane: +{med(tenancy_only.cpu_us) - med(bare.cpu_us):.0f} us "
          f"CPU and +{(med(tenancy_only.p50_ms) - med(bare.p50_ms)) * 1e3:.0f} us p50 per request (goal <= 100 us)")
    print(f"tenant stages + prompt security on the Python server: +{med(full.cpu_us) - med(python_only.cpu_us):.0f} us "
          f"CPU and +{(med(full.p50_ms) - med(python_only.p50_ms)) * 1e3:.0f} us p50 per request")
    print(f"gateway RSS: {idle:.1f} MB idle, {busy:.1f} MB with {args.connections} open connections (goal < 80)")


if __name__ == "__main__":
    main()
