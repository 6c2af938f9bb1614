"""Where a decode step's time goes, for bench/gpu_engine_check.py. At batch 1: CUDA-graph replays per
step, the host's Python by own time (cProfile), and the device's launches and top ops
(torch.profiler); it found the NVML read that cost 4-5 ms a step (bench/RESULTS.md). At the largest
batch: the device's kernels over a few decode steps once every prompt is in, and the host's share
of the step (the time the device waits for the next step's inputs)."""
from __future__ import annotations

import cProfile
import io
import pstats
import time
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


def profile_batch_decode(llm, prompts: list[list[int]], steps: int, device: str) -> dict:
    """Adds `prompts` (ignore_eos, greedy), steps the engine until every prompt is computed, then
    times `steps` decode steps alone and again under torch.profiler. Kernel times are the device's
    own (self CUDA time); host_ms is the step time not covered by them."""
    from torch.profiler import ProfilerActivity, profile

    from engine import SamplingParams

    engine = llm.engine
    for i, prompt in enumerate(prompts):  # room for the prefill's token and 2 x steps decodes
        engine.add_request(f"profile-{i}", prompt, SamplingParams(temperature=0, max_tokens=2 * steps + 1,
                                                                  ignore_eos=True))
    while any(seq.num_output_tokens == 0 for seq in engine.scheduler.running + engine.scheduler.waiting):
        engine.step()
    gm.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    gm.synchronize(device)
    step_ms = (time.perf_counter() - started) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.step()
        gm.synchronize(device)
    while engine.has_unfinished_requests():
        engine.step()
    events = prof.key_averages()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    kernel_ms = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / steps / 1e3
    return {"batch": len(prompts), "steps": steps, "step_ms": step_ms, "device_kernel_ms": kernel_ms,
            "host_ms": max(step_ms - kernel_ms, 0.0), "table": events.table(sort_by=key, row_limit=20)[-8000:]}
