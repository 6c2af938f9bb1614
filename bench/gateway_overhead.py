"""What the gateway costs: `llmaas gateway` in front of an instant backend vs that backend alone.

Same run, same load generator, interleaved rounds (this machine is shared and noisy):
- throughput: non-streaming chat completions/s at a fixed concurrency, through the gateway vs
  straight to the bare httptools server (bench/instant_backend.py); goal >= 0.5;
- added latency: p50 of sequential requests through the gateway minus straight; goal <= 0.5 ms;
- memory: the gateway's resident set with 1,000 open client connections; goal < 80 MB.

Run: `python -m bench.gateway_overhead [--requests 4000] [--concurrency 16] [--rounds 3]`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REQUEST_BODY = b'{"model":"m","messages":[{"role":"user","content":"Say ok."}],"max_tokens":1}'
_REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(_REQUEST_BODY), _REQUEST_BODY))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def throughput(port: int, requests: int, concurrency: int) -> float:
    """Completed requests per second, `concurrency` keep-alive connections each looping."""
    left = requests

    async def worker() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            await _exchange(reader, writer)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - start)


async def latencies(port: int, requests: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(requests):
        start = time.perf_counter()
        await _exchange(reader, writer)
        out.append(time.perf_counter() - start)
    writer.close()
    return out


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
    await asyncio.gather(*(_exchange(r, w) for r, w in streams))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    backend_port, gateway_port = free_port(), free_port()
    config = Path(tempfile.mkdtemp()) / "gateway.toml"
    config.write_text(f'[server]\nport = {gateway_port}\n[[models]]\nname = "m"\n'
                      f'hosts = ["http://127.0.0.1:{backend_port}"]\n')
    procs = [subprocess.Popen([sys.executable, "-m", "bench.instant_backend", "--port", str(backend_port)])]
    procs.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config)],
                                  stdout=subprocess.DEVNULL))
    try:
        wait_port(backend_port)
        wait_port(gateway_port)
        import uvloop

        direct_rps, gateway_rps, direct_p50, gateway_p50 = [], [], [], []
        for _ in range(args.rounds):
            for port, rps, p50 in ((backend_port, direct_rps, direct_p50), (gateway_port, gateway_rps, gateway_p50)):
                rps.append(uvloop.run(throughput(port, args.requests, args.concurrency)))
                p50.append(statistics.median(uvloop.run(latencies(port, args.latency_requests))) * 1e3)
        idle, busy = uvloop.run(rss_with_connections(gateway_port, procs[1].pid, args.connections))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    d_rps, g_rps = statistics.median(direct_rps), statistics.median(gateway_rps)
    d_p50, g_p50 = statistics.median(direct_p50), statistics.median(gateway_p50)
    print(f"machine: {os.cpu_count()} CPUs; rounds: {args.rounds}; concurrency {args.concurrency}; "
          f"{args.requests} requests per throughput run, {args.latency_requests} sequential for latency")
    print("| path | chat completions/s | p50 latency (ms) |\n|---|---|---|")
    print(f"| bare httptools server | {d_rps:.0f} | {d_p50:.3f} |")
    print(f"| gateway -> that server | {g_rps:.0f} | {g_p50:.3f} |")
    print(f"throughput ratio {g_rps / d_rps:.2f} (goal >= 0.5); added p50 {g_p50 - d_p50:.3f} ms (goal <= 0.5)")
    print(f"gateway RSS: {idle:.1f} MB idle, {busy:.1f} MB with {args.connections} open connections (goal < 80)")


if __name__ == "__main__":
    main()
