"""Where a batch-1 decode step's time goes, for bench/gpu_engine_check.py: CUDA-graph replays per
step, the host's Python by own time (cProfile), and the device's launches and top ops
(torch.profiler). It found the NVML read that cost 4-5 ms a step (bench/RESULTS.md)."""
from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable

import gpu_models as gm

LAUNCH_CALLS = ("cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")


def profile_decode_steps(llm, generate: Callable[[int], object], steps: int, device: str) -> dict:
    """`generate(k)` runs one fresh prompt for k new tokens on `llm`'s engine."""
    from torch.profiler import ProfilerActivity, profile

    runner = llm.engine.runner
    replays = [0]
    replay = runner._replay_decode

    def counted(batch):
        replays[0] += 1
        return replay(batch)

    runner._replay_decode = counted
    prof = cProfile.Profile()

    def profiled() -> None:
        prof.enable()
        try:
            generate(steps)
        finally:
            prof.disable()

    try:
        secs, _ = gm.timed(profiled, device)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as torch_prof:
            generate(min(8, steps))
        events = torch_prof.key_averages()
        launches = {e.key: e.count for e in events if e.key in LAUNCH_CALLS}
        table = events.table(sort_by="self_cpu_time_total", row_limit=15)
    finally:
        runner._replay_decode = replay
    return {"graph_sizes": runner.graphs.sizes if runner.graphs is not None else None,
            "graph_replays": replays[0], "steps": steps, "seconds": secs, "launches_8_tokens": launches,
            "cprofile": text.getvalue()[-6000:], "torch_profile": table[-6000:]}
