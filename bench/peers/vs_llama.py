"""`llmaas serve` against llama.cpp's `llama-server` (Q4_1 and BF16), same workload, one run.

    python -m bench.peers.vs_llama --out bench-results/vs-llama [--repeats 3] [--output-len 128]

For each server in turn (ours, then llama-server on the shipped Q4_1 GGUF, then on its BF16
conversion) it starts the server on a free loopback port, runs `llmaas bench serve` at concurrency
1 and 32 (each level its own request count), stops the server, and finally prints
`llmaas bench compare` with ours as the baseline. Servers run one at a time: on a 2-core box two
servers would measure each other.
"""
from __future__ import annotations

import argparse
import http.client
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from bench.peers.llama_server import bf16_path, find_binary, free_port, shipped_gguf, start

LEVELS = "1:8,32:64"  # concurrency:measured requests; c=1 is slow per request, c=32 runs two rounds


def levels(text: str) -> list[tuple[int, int]]:
    return [(int(c), int(n)) for c, _, n in (item.partition(":") for item in text.split(","))]


def bench(base_url: str, model: str, out: Path, args: argparse.Namespace, api_key: str | None = None) -> None:
    for concurrency, n in levels(args.levels):
        key = ["--api-key", api_key] if api_key else []
        cmd = [sys.executable, "-m", "gateway.cli", "bench", "serve", "--base-url", base_url, "--model", model, *key,
               "--concurrency", str(concurrency), "--num-requests", str(n), "--repeats", str(args.repeats),
               "--output-len", str(args.output_len), "--input-len", str(args.input_len), "--warmup", "4",
               "--out", str(out / f"c{concurrency}")]
        subprocess.run(cmd, check=False)


def ours(out: Path, args: argparse.Namespace) -> None:
    port = free_port()
    # As users run it: behind the gateway, with an API key (one of our choosing, through the
    # environment variable `llmaas serve` reads).
    api_key = "bench-" + secrets.token_hex(16)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                             "--max-num-seqs", "64"], env={**os.environ, "LLMAAS_API_KEY": api_key})
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llmaas serve did not come up")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v1/models", headers={"authorization": f"Bearer {api_key}"})
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(1)
        bench(f"http://127.0.0.1:{port}/v1", "smollm2:135m", out, args, api_key)
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--binary", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--input-len", default="64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--levels", default=LEVELS, help="comma-separated concurrency:requests")
    args = p.parse_args(argv)
    binary = find_binary(args.binary)
    load = os.getloadavg()[0]
    if load > 1.5:  # each result records the load average too; this says it up front
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: the numbers will measure the "
              "neighbours as much as the servers", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    ours(args.out / "ours", args)
    for name, model in (("llama-q4_1", shipped_gguf()), ("llama-bf16", bf16_path())):
        if not model.is_file():
            print(f"skipping {name}: no {model} (python -m bench.peers.llama_server --make-bf16)", file=sys.stderr)
            continue
        with start(binary, model, parallel=args.parallel, threads=args.threads,
                   log=args.out / f"{name}.log") as url:
            bench(url, "smollm2", args.out / name, args)
    for c, _ in levels(args.levels):
        runs = [args.out / n / f"c{c}" for n in ("ours", "llama-q4_1", "llama-bf16") if (args.out / n / f"c{c}").is_dir()]
        out = args.out / f"compare-c{c}.md"
        subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "compare", *map(str, runs), "--out", str(out)],
                       check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
