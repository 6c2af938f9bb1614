"""Where the engine stands on a GPU: hardware ceilings, greedy parity with transformers (fp32), bf16
throughput of a Llama-3.1-8B-shaped random model at batch 1/16/64/256 with 1k context against
transformers `generate` and the roofline, and energy per token (NVML).

    python3 bench/gpu_engine_check.py --out OUTDIR [--budget-s 230]   # on a CUDA machine
    python3 bench/gpu_engine_check.py --out /tmp/gpucheck --smoke      # CPU, tiny shapes, seconds

Writes OUTDIR/engine_check.json (after every measurement, so a killed run leaves what it had) and
OUTDIR/engine_check.md, and prints the Markdown tables last. Random weights everywhere; token ids
are fed directly; the engine makes its random weights on the GPU (load_format="dummy"). A row that
would not fit the time budget is skipped, and the report says so. Exit status: 0 all fine, 1 a stage raised, 2 parity below n/n.
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

import gpu_models as gm  # noqa: E402
from gpu_step_profile import profile_batch_decode, profile_decode_steps  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.smoke = args, args.smoke
        self.device = "cpu" if args.smoke else "cuda"
        self.deadline = T0 + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report: dict = {"meta": {}, "ceilings": None, "correctness": None, "throughput": [],
                             "energy": [], "skipped": [], "errors": []}
        self.tok = None
        self.tmp_root = args.tmp_dir or None

    def save(self) -> None:
        path = self.out / "engine_check.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.report, indent=1, default=str))
        path.with_suffix(".tmp").replace(path)

    def stage(self, name: str, fn, *a) -> object:
        log(f"stage {name}: start")
        try:
            result = fn(*a)
            log(f"stage {name}: done")
            return result
        except Exception as e:  # noqa: BLE001 - one failure must not stop the other stages
            log(f"stage {name}: FAILED {type(e).__name__}: {e}")
            self.report["errors"].append({"stage": name, "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc()})
            traceback.print_exc()
        except SystemExit:  # SIGTERM from the time limit: record it, keep what was measured
            log(f"stage {name}: interrupted (SIGTERM, time limit)")
            self.report["errors"].append({"stage": name, "error": "interrupted by SIGTERM (time limit)"})
            raise
        finally:
            self.save()
            free_memory(self.device)

    # ---- stages -------------------------------------------------------------------------
    def meta(self) -> None:
        import transformers

        m = {"smoke": self.smoke, "device": self.device, "python": platform.python_version(),
             "torch": torch.__version__, "transformers": transformers.__version__, "budget_s": self.args.budget_s}
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            m |= {"gpu": props.name, "gpu_memory_GiB": round(props.total_memory / 2**30, 1),
                  "cuda": torch.version.cuda, "sm": f"{props.major}.{props.minor}"}
        else:
            m |= {"gpu": None, "cpu_threads": torch.get_num_threads()}
        self.report["meta"] = m
        self.tok = gm.build_tokenizer()
        m["tokenizer_vocab"] = self.tok.get_vocab_size()
        log(f"meta: {m}")

    def ceilings(self) -> None:
        if self.smoke:
            c = gm.measure_ceilings("cpu", 64 * 2**20, 256, torch.float32)
        else:
            c = gm.measure_ceilings("cuda", 2 * 2**30, 8192, torch.bfloat16)
        self.report["ceilings"] = c
        log(f"ceilings: copy {c['bandwidth_GBps']:.0f} GB/s, matmul {c['matmul_TFLOPs']:.1f} TFLOP/s")

    def correctness(self) -> None:
        from engine import LLM, SamplingParams

        torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 on both sides
        torch.backends.cudnn.allow_tf32 = False
        new_tokens = 8 if self.smoke else 32
        model = gm.make_hf_model(gm.TINY_CHECK, self.device, torch.float32, seed=1, std=0.05)
        with tempfile.TemporaryDirectory(prefix="llmaas-tiny-", dir=self.tmp_root) as tmp:
            gm.save_model_folder(model, self.tok, Path(tmp))
            llm = LLM(model=tmp, dtype=torch.float32, device=self.device, kv_cache_bytes=64 * 2**20,
                      max_num_seqs=8, max_num_batched_tokens=2048)
        gen = torch.Generator().manual_seed(2)
        lengths = [3, 9, 17, 31, 48, 64, 90, 127]
        prompts = [torch.randint(3, gm.TINY_CHECK["vocab_size"], (n,), generator=gen).tolist() for n in lengths]
        params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        ours = [list(r.outputs[0].token_ids) for r in llm.generate(prompts, params)]
        hf_batched = gm.hf_generate(model, prompts, new_tokens, self.device)
        hf_single = [gm.hf_generate(model, [p], new_tokens, self.device)[0] for p in prompts]

        def first_diff(a: list[int], b: list[int]) -> int | None:
            same_len = None if len(a) == len(b) else min(len(a), len(b))
            return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), same_len)

        c = {"prompts": len(prompts), "prompt_lengths": lengths, "new_tokens": new_tokens, "dtype": "float32",
             "match_hf_batched": sum(o == h for o, h in zip(ours, hf_batched)),
             "match_hf_single": sum(o == h for o, h in zip(ours, hf_single)),
             "first_divergence_vs_batched": [first_diff(o, h) for o, h in zip(ours, hf_batched)],
             "engine_tokens_first": ours[0], "hf_tokens_first": hf_batched[0]}
        self.report["correctness"] = c
        log(f"correctness: engine == HF batched {c['match_hf_batched']}/{len(prompts)}, "
            f"== HF one-by-one {c['match_hf_single']}/{len(prompts)}")

    def throughput(self, name: str, shape: dict, batches: tuple[int, ...], deadline: float,
                   with_hf: bool = True) -> None:
        """Our engine, then transformers, on the same random-weight shape, one after the other so that
        each has the whole card. Per batch: a 1-token run (prefill) and an n-token run on fresh
        prompts; decode time per step = (T_n - T_1) / (n - 1)."""
        prompt_len, n = (16, 8) if self.smoke else (896, 128)  # "1k context": 896 + 128 = 1024
        info = gm.shape_bytes(shape, torch.bfloat16)
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))

        def prompts(b: int) -> list[list[int]]:
            return torch.randint(3, shape["vocab_size"], (b, prompt_len), generator=gen).tolist()

        engine_share = 0.45 if with_hf else 1.0  # of the time to the deadline; transformers gets the rest
        llm = self._engine_for(name, shape, max(batches), prompt_len + n)
        if llm is not None:
            from engine import SamplingParams

            def run_engine(ps: list[list[int]], k: int) -> int:
                res = llm.generate(ps, SamplingParams(temperature=0, max_tokens=k, ignore_eos=True))
                return sum(len(r.outputs[0].token_ids) for r in res)

            split = time.perf_counter() + (deadline - time.perf_counter()) * engine_share
            self._runner_rows(name, "engine", run_engine, prompts, batches, prompt_len, n, info, split)
            self.stage(f"step profile {name}", self._step_profile, name, llm, run_engine, prompts, n)
            self.stage(f"batch profile {name}", self._batch_profile, name, llm, prompts, max(batches),
                       min(4, (n - 1) // 2), split)
            del llm, run_engine
            free_memory(self.device)
            log(f"{name}: engine freed, {gm.allocated_gib(self.device):.1f} GiB still allocated")
        if not with_hf:
            return
        log(f"{name}: building the transformers model on {self.device}")
        model = gm.make_hf_model(shape, self.device, torch.bfloat16)

        def run_hf(ps: list[list[int]], k: int) -> int:
            return sum(len(o) for o in gm.hf_generate(model, ps, k, self.device))

        try:
            self._runner_rows(name, "transformers", run_hf, prompts, batches, prompt_len, n, info, deadline)
        finally:
            model = run_hf = None  # frees the card for the next shape

    def _step_profile(self, name: str, llm, run_engine, prompts, steps: int) -> None:
        result = profile_decode_steps(llm, lambda k: run_engine(prompts(1), k), steps, self.device)
        self.report.setdefault("profiles", {})[name] = result
        log(f"{name} step profile: {steps} tokens in {result['seconds']:.2f}s, graph replays "
            f"{result['graph_replays']}, graph sizes {result['graph_sizes'] and len(result['graph_sizes'])}, "
            f"launches (8 tokens) {result['launches_8_tokens']}")
        print(result["cprofile"], flush=True)
        print(result["torch_profile"], flush=True)

    def _batch_profile(self, name: str, llm, prompts, batch: int, steps: int, deadline: float) -> None:
        """The largest batch's decode step by kernel, when its row ran and its prefill fits the time left."""
        row = next((r for r in self.report["throughput"] if r["model"] == name and r["runner"] == "engine"
                    and r["batch"] == batch), None)
        if row is None or 2 * row["prefill_seconds"] + 10 > deadline - time.perf_counter():
            log(f"{name} batch profile: skipped (no batch {batch} row, or no time)")
            return
        result = profile_batch_decode(llm, prompts(batch), steps, self.device)
        self.report.setdefault("batch_profiles", {})[name] = {k: v for k, v in result.items() if k != "table"}
        log(f"{name} batch {batch} decode step: {result['step_ms']:.2f} ms, device kernels "
            f"{result['device_kernel_ms']:.2f} ms, the rest (host, gaps) {result['host_ms']:.2f} ms")
        print(result["table"], flush=True)

    def _engine_for(self, name: str, shape: dict, max_batch: int, max_len: int):
        from engine import LLM

        with tempfile.TemporaryDirectory(prefix=f"llmaas-{name}-", dir=self.tmp_root) as tmp:
            gm.save_config_folder(shape, self.tok, Path(tmp))
            log(f"{name}: loading random weights into the engine (load_format=dummy)")
            memory = {"kv_cache_bytes": 64 * 2**20} if self.smoke else {"gpu_memory_utilization": 0.9}
            try:
                return LLM(model=tmp, load_format="dummy", dtype=torch.bfloat16, device=self.device, **memory,
                           max_num_seqs=max_batch, max_num_batched_tokens=16384, max_model_len=max_len)
            except Exception as e:  # noqa: BLE001 - transformers' rows still run
                self._row_error(f"{name}/engine-load", e)
                return None

    def _runner_rows(self, name: str, kind: str, fn, prompts, batches: tuple[int, ...], prompt_len: int, n: int,
                     info: dict, deadline: float) -> None:
        dev = self.device
        try:
            warm_s, _ = gm.timed(lambda: fn(prompts(2), 4), dev)
            log(f"{name} {kind}: warm-up {warm_s:.1f}s")
        except Exception as e:  # noqa: BLE001
            self._row_error(f"{name}/{kind}/warm-up", e)
            return
        last: dict | None = None
        for b in batches:
            left = deadline - time.perf_counter()
            if last is not None:  # prefill grows with the batch, decode steps slowly
                need = 2 * last["prefill_seconds"] * b / last["batch"] + n * last["decode_step_seconds"] * 2
                if need > left:
                    log(f"{name} {kind} batch {b}: skipped (needs ~{need:.0f}s, {left:.0f}s left)")
                    self.report["skipped"].append(f"{name}/{kind}/batch {b}: time budget")
                    continue
            try:
                metered = b == max(batches)
                ps1, ps = prompts(b), prompts(b)
                meter = self._energy_start() if metered else None
                t1, _ = gm.timed(lambda: fn(ps1, 1), dev)
                joules_1 = self._energy_joules(meter)
                meter = self._energy_start() if metered else None
                tn, tokens = gm.timed(lambda: fn(ps, n), dev)
                joules_n = self._energy_joules(meter)
                if joules_1 is not None and joules_n is not None:
                    self._energy_row(name, kind, b, n, tokens, t1, tn, joules_1, joules_n)
                row = gm.throughput_row(name, kind, b, prompt_len, n, t1, tn, tokens, info, self.report.get("ceilings"))
                if dev == "cuda":
                    row["peak_gpu_GiB"] = torch.cuda.max_memory_allocated() / 2**30
                self.report["throughput"].append(row)
                last = row
                log(f"{name} {kind:12s} batch {b:3d}: prefill {row['prefill_tokens_per_s']:.0f} tok/s, decode "
                    f"{row['decode_tokens_per_s']:.0f} tok/s ({row['decode_step_seconds'] * 1e3:.2f} ms/step, "
                    f"{row.get('decode_roofline_fraction', 0):.0%} of roofline), end to end {row['tokens_per_s']:.0f} tok/s")
            except Exception as e:  # noqa: BLE001
                self._row_error(f"{name}/{kind}/batch{b}", e)
                free_memory(dev)
            self.save()

    # ---- energy -------------------------------------------------------------------------
    def _energy_start(self) -> tuple | None:
        if self.device != "cuda":
            self.report["energy_skipped"] = "no NVML on CPU (smoke)"
            return None
        meter = gm.EnergyMeter()
        if not meter.available:
            self.report["energy_skipped"] = f"NVML unavailable: {meter.error}"
            return None
        torch.cuda.synchronize()
        return meter, meter.read_mj()

    @staticmethod
    def _energy_joules(started: tuple | None) -> float | None:
        if started is None:
            return None
        torch.cuda.synchronize()
        meter, before = started
        return (meter.read_mj() - before) / 1e3

    def _energy_row(self, name: str, runner: str, batch: int, n: int, tokens: int, t1: float, tn: float,
                    joules_1: float, joules_n: float) -> None:
        """The whole n-token run per output token, and its steady decode part: the n-token run less
        the 1-token run (same prompts' shape), per token decoded after the first. Each reading is
        good to about one counter update (~0.1 s x power), hence the decode part's uncertainty."""
        decode_j, decode_s, decode_tokens = joules_n - joules_1, tn - t1, batch * (n - 1)
        power = joules_n / tn
        uncertainty_j = 2 * 0.1 * power
        self.report["energy"].append({
            "model": name, "runner": runner, "batch": batch, "tokens": tokens, "seconds": tn, "joules": joules_n,
            "avg_power_W": power, "kWh_per_M_tokens": joules_n / 3.6e6 / tokens * 1e6,
            "decode_joules": decode_j, "decode_seconds": decode_s, "decode_tokens": decode_tokens,
            "decode_kWh_per_M_tokens": decode_j / 3.6e6 / decode_tokens * 1e6,
            "decode_uncertainty": uncertainty_j / max(decode_j, 1e-9),
            "reliable": tn >= 5.0 and t1 >= 5.0,
            "note": "" if tn >= 5.0 and t1 >= 5.0 else "a window < 5 s: NVML counter too coarse"})

    def _row_error(self, where: str, e: Exception) -> None:
        log(f"{where}: FAILED {type(e).__name__}: {e}")
        traceback.print_exc()
        self.report["errors"].append({"stage": where, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc()})


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, batch 1 and 2, 8 tokens, no NVML")
    p.add_argument("--budget-s", type=float, default=230.0, help="seconds for the whole script, from its start")
    p.add_argument("--tmp-dir", help="where model folders go (default: the system temp dir)")
    args = p.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: use --smoke on CPU", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, on_term)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
    check = Check(args)
    try:
        check.stage("meta", check.meta)
        check.stage("ceilings", check.ceilings)
        if check.tok is not None:
            check.stage("correctness", check.correctness)
            # (name, shape, batches, share of the time left, transformers too): the small shape first and
            # engine only (its step is all overhead: the step profile is the point), then the issue's.
            shapes = ([("tiny-a", gm.SMOKE_A, (1, 2), 0.3, False), ("tiny-b", gm.SMOKE_B, (1, 2), 1.0, True)]
                      if args.smoke else [("smollm2-135m", gm.SMOLLM2_135M, (1, 64), 0.15, False),
                                          ("llama3.1-8b", gm.LLAMA31_8B, (1, 16, 64, 256), 1.0, True)])
            for name, shape, batches, share, with_hf in shapes:
                deadline = time.perf_counter() + (check.deadline - time.perf_counter()) * share
                check.stage(f"throughput {name}", check.throughput, name, shape, batches, deadline, with_hf)
    finally:
        check.save()
        md = gm.report_markdown(check.report)
        (check.out / "engine_check.md").write_text(md)
        log("finished")
        print("\n" + md, flush=True)
    cor = check.report["correctness"]
    if check.report["errors"]:
        return 1
    if cor and cor["match_hf_batched"] != cor["prompts"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
