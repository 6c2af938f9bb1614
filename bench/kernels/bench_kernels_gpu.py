"""Each GPU kernel timed against its floor: bytes moved / measured HBM bandwidth (flops / measured
matmul rate where compute-bound), next to the torch version it replaces.

    python3 bench/kernels/bench_kernels_gpu.py --out OUTDIR            # on a CUDA machine
    python3 bench/kernels/bench_kernels_gpu.py --out /tmp/kb --smoke   # CPU, Triton interpreter, tiny shapes

Shapes are Llama-3.1-8B's (32 heads, 8 kv heads, head_dim 128, hidden 4096, intermediate 14336),
bf16, and large enough (>= 100 MB moved) that the L2 cache does not flatter the numbers. Timing:
CUDA events around a graph of 20 back-to-back calls (eager if not capturable), median of 5 rounds. Writes OUTDIR/kernels.json and
OUTDIR/kernels.md (also printed). The goal row: decode attention at batch 64, context 4k, >= 80%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from engine.kernels import cuda_kernels, reference, torch_paged  # noqa: E402
from engine.kernels.triton import (  # noqa: E402
    activation, attention_decode, attention_prefill, cache_write, norm, rotary)
from engine.kernels.triton.testing import make_paged_batch  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER, BLOCK = 32, 8, 128, 4096, 14336, 16


def time_call(fn: Callable[[], object], device: str, calls: int = 20, rounds: int = 5, graph: bool = False) -> float:
    """Median seconds per call. With `graph` (our kernels) the calls are captured in one CUDA graph
    and its replays timed, so the Python launch cost (tens of microseconds a Triton launch) stays
    out, as it does in the engine's decode graphs; the torch references run eagerly (some sync)."""
    fn()
    if device != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    torch.cuda.synchronize()
    run = _graphed(fn, calls) if graph else lambda: [fn() for _ in range(calls)]
    times = []
    for _ in range(rounds):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3 / calls)
    return statistics.median(times)


def _graphed(fn: Callable[[], object], calls: int) -> Callable[[], object]:
    def eager() -> None:
        for _ in range(calls):
            fn()

    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()
        torch.cuda.synchronize()
        return graph.replay
    except Exception as e:  # noqa: BLE001 - e.g. a host sync inside: time it eagerly
        print(f"  (not capturable, timed eagerly: {type(e).__name__}: {e})", flush=True)
        torch.cuda.synchronize()
        return eager


def ceilings(device: str, smoke: bool) -> tuple[float, float]:
    """(bytes/s of a device copy, counting read + write; bf16 matmul flop/s)."""
    if smoke:
        return 1e10, 1e12
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / time_call(lambda: dst.copy_(src), device, calls=5)
    del src, dst
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    rate = 2 * n ** 3 / time_call(lambda: a @ b, device, calls=5)
    return bandwidth, rate


def cases(device: str, smoke: bool) -> list[tuple[str, str, Callable[[], object], float, float]]:
    """(kernel, shape, call, bytes moved, flops) for every kernel and its torch baseline."""
    dt = torch.bfloat16 if not smoke else torch.float32
    size = dt.itemsize
    out: list[tuple[str, str, Callable[[], object], float, float]] = []
    # Decode attention: reads each sequence's K and V once.
    for batch, ctx in ([(64, 4096), (1, 4096), (256, 1024)] if not smoke else [(2, 40)]):
        b = make_paged_batch([(1, ctx)] * batch, HEADS if not smoke else 4, KV_HEADS if not smoke else 2,
                             HEAD_DIM if not smoke else 16, BLOCK, dt, device, spare_blocks=1)
        kv = batch * ctx * b.k_cache.shape[2] * b.k_cache.shape[3] * 2 * size
        shape = f"b{batch} ctx{ctx}"
        args = (b.query, b.k_cache, b.v_cache, b.block_tables, b.context_lens, b.scale, b.max_context_len)
        out.append(("decode_attention triton", shape, lambda a=args: attention_decode.decode_attention(*a), kv, 0))
        if cuda_kernels.available() and device == "cuda":
            out.append(("decode_attention cuda", shape, lambda a=args: cuda_kernels.decode_attention(*a), kv, 0))
        if batch <= 64 or smoke:
            full = (b.query, b.k_cache, b.v_cache, b.block_tables, b.context_lens, b.query_start_loc, b.scale, 1,
                    b.max_context_len)
            out.append(("decode_attention torch_paged", shape, lambda a=full: torch_paged.paged_attention(*a), kv, 0))
        del b
    # Prefill attention, causal: 4 x (2 q_len^2 / 2) x heads x head_dim x 2 flops.
    q_len, seqs = (2048, 4) if not smoke else (12, 2)
    b = make_paged_batch([(q_len, q_len)] * seqs, HEADS if not smoke else 4, KV_HEADS if not smoke else 2,
                         HEAD_DIM if not smoke else 16, BLOCK, dt, device, spare_blocks=1)
    flops = seqs * 2 * q_len * q_len * b.query.shape[1] * b.query.shape[2]
    moved = (2 * b.query.numel() + 2 * seqs * q_len * b.k_cache.shape[2] * b.k_cache.shape[3]) * size
    pa = (b.query, b.k_cache, b.v_cache, b.block_tables, b.context_lens, b.query_start_loc, b.scale, q_len)
    out.append(("prefill_attention triton", f"{seqs}x{q_len}", lambda: attention_prefill.prefill_attention(*pa),
                moved, flops))
    # Tile shapes for the next tuning step: (block_m, block_n, num_warps, num_stages).
    for bm, bn, warps, stages in ([] if smoke else [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3),
                                                    (128, 32, 4, 2), (64, 128, 4, 2)]):
        out.append((f"prefill_attention triton m{bm}n{bn}w{warps}s{stages}", f"{seqs}x{q_len}",
                    lambda c=(bm, bn, warps, stages): attention_prefill.prefill_attention(
                        *pa, block_m=c[0], block_n=c[1], num_warps=c[2], num_stages=c[3]), moved, flops))
    del b
    # Elementwise kernels.
    tokens = 65536 if not smoke else 5
    kv = torch.randn(tokens, 2 * KV_HEADS, HEAD_DIM, device=device).to(dt)
    key, value = kv[:, :KV_HEADS], kv[:, KV_HEADS:]
    cache = torch.empty(tokens // BLOCK + 1, BLOCK, KV_HEADS, HEAD_DIM, device=device, dtype=dt)
    v_cache = torch.empty_like(cache)
    slots = torch.randperm(tokens, device=device)
    moved = 4 * key.numel() * size + 2 * slots.numel() * 8
    out.append(("write_kv_cache triton", f"t{tokens}", lambda: cache_write.write_kv_cache(key, value, cache, v_cache,
                                                                                        slots), moved, 0))
    if cuda_kernels.available() and device == "cuda":
        out.append(("write_kv_cache cuda", f"t{tokens}", lambda: cuda_kernels.write_kv_cache(key, value, cache,
                                                                                          v_cache, slots), moved, 0))
    out.append(("write_kv_cache torch", f"t{tokens}", lambda: reference.write_kv_cache(key, value, cache, v_cache,
                                                                                     slots), moved, 0))
    rows = 32768 if not smoke else 3
    x, res = (torch.randn(rows, HIDDEN, device=device).to(dt) for _ in range(2))
    w = torch.randn(HIDDEN, device=device).to(dt)
    moved = 4 * x.numel() * size
    out.append(("add_rms_norm triton", f"{rows}x{HIDDEN}", lambda: norm.add_rms_norm(x, res, w, 1e-5), moved, 0))
    out.append(("add_rms_norm torch", f"{rows}x{HIDDEN}", lambda: reference.add_rms_norm(x, res, w, 1e-5), moved, 0))
    tokens = 16384 if not smoke else 3
    qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device=device).to(dt)
    q, k = qkv[:, :HEADS], qkv[:, HEADS:HEADS + KV_HEADS]
    cos, sin = (torch.rand(tokens, 1, HEAD_DIM, device=device).to(dt) for _ in range(2))
    moved = (2 * (q.numel() + k.numel()) + cos.numel()) * size
    out.append(("rotary triton", f"t{tokens}", lambda: rotary.rotary_(q, k, cos, sin), moved, 0))
    out.append(("rotary torch", f"t{tokens}", lambda: reference.rotary(q, k, cos, sin), moved, 0))
    tokens = 8192 if not smoke else 3
    gu = torch.randn(tokens, 2 * INTER, device=device).to(dt)
    moved = 3 * tokens * INTER * size
    out.append(("silu_and_mul triton", f"t{tokens}", lambda: activation.silu_and_mul(gu), moved, 0))
    out.append(("silu_and_mul torch", f"t{tokens}", lambda: activation.silu_and_mul_reference(gu), moved, 0))
    return out


def parse_args(doc: str) -> argparse.Namespace:
    """--out OUTDIR and --smoke, the options every GPU kernel bench takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    return parser.parse_args()


def main() -> int:
    args = parse_args(__doc__)
    device = "cpu" if args.smoke else "cuda"
    bandwidth, matmul = ceilings(device, args.smoke)
    rows: list[dict] = []
    failed = 0
    for name, shape, fn, moved, flops in cases(device, args.smoke):
        failed |= measure(rows, name, shape, fn, moved, flops, device, bandwidth, matmul)
    write_report(Path(args.out), "kernels", "Kernels", device, bandwidth, matmul, rows)
    return failed


def measure(rows: list[dict], kernel: str, shape: str, fn: Callable[[], object], moved: float, flops: float,
            device: str, bandwidth: float, matmul: float) -> int:
    """Times one case (in a CUDA graph unless it is torch's) against its floor, appends its row and
    prints it; 1 where it failed (printed; the other cases still run), else 0."""
    try:
        seconds = time_call(fn, device, graph=not kernel.split()[-1].startswith("torch"))
    except Exception as e:  # noqa: BLE001 - one case's failure must not hide the others' numbers
        print(f"{kernel} {shape}: FAILED {type(e).__name__}: {e}", flush=True)
        return 1
    floor = max(moved / bandwidth, flops / matmul)
    rows.append({"kernel": kernel, "shape": shape, "us": seconds * 1e6, "floor_us": floor * 1e6,
                 "of_floor": floor / seconds, "GBps": moved / seconds / 1e9})
    print(f"{kernel:40s} {shape:22s} {seconds * 1e6:10.1f} us  floor {floor * 1e6:9.1f} us  "
          f"{100 * floor / seconds:5.1f}%", flush=True)
    return 0


def write_report(out: Path, name: str, title: str, device: str, bandwidth: float, matmul: float,
                 rows: list[dict]) -> None:
    """out/{name}.json (every row) and out/{name}.md (the table gpu_check.sh prints last), also printed."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
              "bandwidth_GBps": bandwidth / 1e9, "matmul_TFLOPs": matmul / 1e12, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    lines = [f"### {title} vs floor on {report['device']} (copy {bandwidth / 1e9:.0f} GB/s, "
             f"bf16 matmul {matmul / 1e12:.0f} TFLOP/s)", "",
             "| kernel | shape | us | floor us | % of floor |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['shape']} | {r['us']:.1f} | {r['floor_us']:.1f} | {100 * r['of_floor']:.0f}% |"
              for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
