"""Where the engine stands on a GPU: hardware ceilings, greedy parity with transformers (fp32), bf16
throughput against transformers `generate` and the decode roofline, and energy per token.

    python3 bench/gpu_engine_check.py --out OUTDIR [--budget-s 230]   # on a CUDA machine
    python3 bench/gpu_engine_check.py --out /tmp/gpucheck --smoke      # CPU, tiny shapes, seconds

Writes OUTDIR/engine_check.json (after every measurement, so a killed run leaves what it had) and
OUTDIR/engine_check.md, and prints the Markdown tables last. Random weights everywhere; token ids
are fed directly. Output lengths shrink (128 -> 64 -> 32) where a row would not fit the time budget;
the table says so. Exit status: 0 all fine, 1 a stage raised, 2 parity below n/n.
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
                             "energy": None, "errors": []}
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

    def throughput(self, name: str, shape: dict, deadline: float, energy_row: bool) -> None:
        from engine import LLM, SamplingParams

        dev, dtype = self.device, torch.bfloat16
        prompt_len, full_len = (16, 8) if self.smoke else (128, 128)
        batches = (1, 2) if self.smoke else (1, 16, 64)
        log(f"{name}: building the random model on {dev}")
        model = gm.make_hf_model(shape, dev, dtype)
        tmp = tempfile.TemporaryDirectory(prefix=f"llmaas-{name}-", dir=self.tmp_root)
        llm = None
        try:
            gm.save_model_folder(model, self.tok, Path(tmp.name))
            log(f"{name}: saved to {tmp.name}; loading it into the engine")
            try:
                # On the GPU the KV cache is sized by the runner's profiling pass (the transformers copy
                # of the model shares the card, hence 0.6); 64 MiB in smoke runs.
                memory = {"kv_cache_bytes": 64 * 2**20} if self.smoke else {"gpu_memory_utilization": 0.6}
                llm = LLM(model=tmp.name, dtype=dtype, device=dev, **memory,
                          max_num_seqs=max(batches), max_num_batched_tokens=max(2048, max(batches) * prompt_len))
            except Exception as e:  # noqa: BLE001 - transformers' rows still run
                self._row_error(f"{name}/engine-load", e)
            tmp.cleanup()
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied counted once
            bw = (self.report.get("ceilings") or {}).get("bandwidth_GBps")
            vocab = shape["vocab_size"]
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))

            def prompts(b: int) -> list[list[int]]:
                return torch.randint(3, vocab, (b, prompt_len), generator=gen).tolist()

            def run_engine(ps: list[list[int]], n: int) -> int:
                res = llm.generate(ps, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
                return sum(len(r.outputs[0].token_ids) for r in res)

            def run_hf(ps: list[list[int]], n: int) -> int:
                return sum(len(o) for o in gm.hf_generate(model, ps, n, dev))

            shares = {1: 0.15, 16: 0.25, 64: 0.75, 2: 1.0}
            for b in batches:
                for kind, fn in (("engine", run_engine), ("transformers", run_hf)):
                    if kind == "engine" and llm is None:
                        continue
                    try:
                        warm_n = 8 if not self.smoke else 2
                        warm_s, _ = gm.timed(lambda: fn(prompts(b), warm_n), dev)  # fresh prompts: no prefix-cache hits
                        share = 1.0 if kind == "transformers" and b == max(batches) else shares.get(b, 0.5)
                        allowed = max(0.0, deadline - time.perf_counter()) * share
                        n, note = full_len, ""
                        while n > full_len // 4 and warm_s * n / warm_n > allowed:
                            n //= 2
                        if n != full_len:
                            note = f"output cut to {n} tokens (time budget)"
                        ps = prompts(b)
                        meter = self._energy_start() if energy_row and kind == "engine" and b == max(batches) else None
                        secs, tokens = gm.timed(lambda: fn(ps, n), dev)
                        if meter is not None:
                            self._energy_end(meter, name, b, tokens, secs)
                        row = {"model": name, "runner": kind, "batch": b, "prompt_len": prompt_len, "output_len": n,
                               "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                               "warmup_seconds": warm_s, "weight_bytes": weight_bytes, "note": note}
                        if bw:
                            step_s = weight_bytes / (bw * 1e9)
                            row |= {"roofline_tokens_per_s": b / step_s, "roofline_fraction": tokens / secs * step_s / b}
                        if dev == "cuda":
                            row["peak_gpu_GiB_since_shape_start"] = torch.cuda.max_memory_allocated() / 2**30
                        self.report["throughput"].append(row)
                        log(f"{name} {kind:12s} batch {b:3d}: {tokens} tokens in {secs:.2f}s = "
                            f"{tokens / secs:.1f} tok/s {note}")
                    except Exception as e:  # noqa: BLE001
                        self._row_error(f"{name}/{kind}/batch{b}", e)
                    self.save()
        finally:
            del llm, model
            tmp.cleanup()

    # ---- energy -------------------------------------------------------------------------
    def _energy_start(self) -> tuple | None:
        if self.device != "cuda":
            self.report["energy"] = {"skipped": "no NVML on CPU (smoke)"}
            return None
        meter = gm.EnergyMeter()
        if not meter.available:
            self.report["energy"] = {"skipped": f"NVML unavailable: {meter.error}"}
            return None
        torch.cuda.synchronize()
        return meter, meter.read_mj()

    def _energy_end(self, started: tuple, name: str, batch: int, tokens: int, secs: float) -> None:
        meter, before = started
        joules = (meter.read_mj() - before) / 1e3
        self.report["energy"] = {
            "model": name, "batch": batch, "tokens": tokens, "seconds": secs, "joules": joules,
            "avg_power_W": joules / secs, "kWh_per_M_tokens": joules / 3.6e6 / tokens * 1e6,
            "reliable": secs >= 5.0, "note": "" if secs >= 5.0 else "window < 5 s: NVML counter too coarse"}

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
            shapes = ([("tiny-a", gm.SMOKE_A), ("tiny-b", gm.SMOKE_B)] if args.smoke
                      else [("smollm2-135m", gm.SMOLLM2_135M), ("llama3.2-1b", gm.LLAMA32_1B)])
            for i, (name, shape) in enumerate(shapes):
                left = check.deadline - time.perf_counter()
                deadline = time.perf_counter() + (left * 0.5 if i == 0 else left)  # the 1B shape costs more to set up
                check.stage(f"throughput {name}", check.throughput, name, shape, deadline, i == len(shapes) - 1)
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
