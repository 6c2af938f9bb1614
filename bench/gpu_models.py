"""Helpers of bench/gpu_engine_check.py: a small byte-level BPE tokenizer, random-weight Llama folders
(Hugging Face layout) built with transformers, transformers' batched greedy `generate`, hardware
ceilings, NVML energy, and the report's Markdown tables."""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>"]  # ids 0, 1, 2
BOS_ID, EOS_ID = 0, 1

# Model shapes (transformers LlamaConfig keyword arguments).
TINY_CHECK = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048, tie_word_embeddings=False)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=True,
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Smoke-test shapes (CPU): vocabularies larger than the tokenizer's, as in the real shapes.
SMOKE_A = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=2048, max_position_embeddings=512, tie_word_embeddings=True)
SMOKE_B = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6,
               num_key_value_heads=3, vocab_size=3000, max_position_embeddings=1024, tie_word_embeddings=True,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 128})


def build_tokenizer(vocab_size: int = 1000, seed: int = 0):
    """A byte-level BPE `tokenizers.Tokenizer` trained on generated pseudo-words (vocab <= vocab_size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ai")]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(600)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) + rng.choice([".", "!", "?", ","])
             for _ in range(600)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    assert tok.get_vocab_size() <= vocab_size and tok.token_to_id("<s>") == BOS_ID and tok.token_to_id("</s>") == EOS_ID
    return tok


def write_tokenizer(tok, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOS_ID], "model_max_length": 131072}))


def make_hf_model(shape: dict, device: str, dtype: torch.dtype, seed: int = 0, std: float = 0.02):
    """A random-weight transformers LlamaForCausalLM, built on `device` directly, in `dtype`, eval mode:
    matrices ~ N(0, std), norms at 1, so activations stay finite in bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, **shape)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in `dtype`: an 8B model in fp32 first would take 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)
    # Never stop early: outputs have exactly the requested length on both sides.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = BOS_ID
    return model


def save_config_folder(shape: dict, tok, folder: Path) -> Path:
    """A Hugging Face folder with config.json and the tokenizer but no weights: the engine's
    load_format="dummy" makes random weights of these shapes on the device."""
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    LlamaConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, architectures=["LlamaForCausalLM"], **shape).save_pretrained(folder)
    write_tokenizer(tok, folder)
    return folder


def save_model_folder(model, tok, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(tok, folder)
    return folder


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def hf_generate(model, prompts: list[list[int]], new_tokens: int, device: str) -> list[list[int]]:
    """Greedy, batched, left-padded: the new tokens of each prompt."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), BOS_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=BOS_ID)
    return out[:, width:].tolist()


def shape_bytes(shape: dict, dtype: torch.dtype) -> dict:
    """Parameter count, weight bytes (a tied lm_head counted once) and KV-cache bytes per token."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h
    embed = shape["vocab_size"] * h
    params = layers * per_layer + embed * (1 if shape.get("tie_word_embeddings") else 2) + h
    size = dtype.itemsize
    # lm_head is a matmul per token; the embedding is a gather (not in the per-token flops)
    matmul_params = layers * (per_layer - 2 * h) + embed
    return {"params": params, "weight_bytes": params * size, "kv_bytes_per_token": 2 * layers * kv * size,
            "flops_per_token": 2 * matmul_params}


def throughput_row(model: str, runner: str, batch: int, prompt_len: int, n: int, t1: float, tn: float,
                   tokens: int, info: dict, ceilings: dict | None) -> dict:
    """One runner at one batch: prefill from the 1-token run, decode from the difference of the two
    runs, each against its floor (matmul flops / measured rate; bytes read per step / measured
    bandwidth, weights once plus every sequence's KV cache at its mean decode length)."""
    step = max(tn - t1, 1e-9) / max(n - 1, 1)
    row = {"model": model, "runner": runner, "batch": batch, "prompt_len": prompt_len, "output_len": n,
           "tokens": tokens, "seconds": tn, "tokens_per_s": tokens / tn, "prefill_seconds": t1,
           "prefill_tokens_per_s": batch * prompt_len / t1, "decode_step_seconds": step,
           "decode_tokens_per_s": batch / step, "weight_bytes": info["weight_bytes"]}
    if ceilings:
        step_bytes = info["weight_bytes"] + batch * (prompt_len + n / 2) * info["kv_bytes_per_token"]
        floor_step = step_bytes / (ceilings["bandwidth_GBps"] * 1e9)
        prefill_floor = batch * prompt_len * info["flops_per_token"] / (ceilings["matmul_TFLOPs"] * 1e12)
        row |= {"decode_floor_step_seconds": floor_step, "decode_roofline_fraction": floor_step / step,
                "prefill_floor_seconds": prefill_floor, "prefill_roofline_fraction": prefill_floor / t1}
    return row


def allocated_gib(device: str) -> float:
    return torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def timed(fn, device: str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _median_seconds(fn, device: str, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ceilings(device: str, copy_bytes: int, matmul_n: int, dtype: torch.dtype) -> dict:
    """Device-to-device copy bandwidth (read + write bytes) and dense matmul throughput, medians of 10."""
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, iters=10, warmup=3)
    del src, dst
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    mm_s = _median_seconds(lambda: a @ b, device, iters=10, warmup=3)
    del a, b
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"copy_bytes": copy_bytes, "copy_seconds": copy_s, "bandwidth_GBps": 2 * copy_bytes / copy_s / 1e9,
            "matmul_n": matmul_n, "matmul_dtype": str(dtype).removeprefix("torch."), "matmul_seconds": mm_s,
            "matmul_TFLOPs": 2 * matmul_n ** 3 / mm_s / 1e12}


class EnergyMeter:
    """NVML total energy (mJ) of the GPU torch uses as cuda:0; `available` is False without NVML."""

    def __init__(self) -> None:
        self.available, self.handle, self.error = False, None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handle = self._find_handle(pynvml)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.available = True
        except Exception as e:  # noqa: BLE001 - any NVML failure only disables the energy figures
            self.error = f"{type(e).__name__}: {e}"

    @staticmethod
    def _find_handle(pynvml):
        try:
            uuid = str(torch.cuda.get_device_properties(0).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
        except Exception:  # noqa: BLE001
            return pynvml.nvmlDeviceGetHandleByIndex(0)

    def read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))


def report_markdown(report: dict) -> str:
    """The Markdown tables of a gpu_engine_check report."""
    m, c, cor = report["meta"], report["ceilings"], report["correctness"]
    lines = [f"## GPU engine check ({m.get('gpu') or 'CPU smoke'}, torch {m.get('torch')}, "
             f"transformers {m.get('transformers')})", ""]
    if c:
        lines += ["| copy bandwidth GB/s (read+write) | matmul TFLOP/s |", "|---|---|",
                  f"| {c['bandwidth_GBps']:.0f} | {c['matmul_TFLOPs']:.1f} ({c['matmul_dtype']} {c['matmul_n']}^3) |", ""]
    if cor:
        n = cor["prompts"]
        lines += ["| parity (fp32 greedy, 8 prompts) | engine = HF batched | engine = HF one-by-one |", "|---|---|---|",
                  f"| {cor['new_tokens']} new tokens | {cor['match_hf_batched']}/{n} | {cor['match_hf_single']}/{n} |", ""]
    rows = report["throughput"]
    if rows:
        lines += _throughput_table(rows)
    for e in report.get("energy") or []:
        if e is report["energy"][0]:
            lines += ["| energy (NVML) | tokens out | s | avg W | kWh / M output tokens, whole run | decode only "
                      "(n-token run less 1-token run) | reliable |", "|---|---|---|---|---|---|---|"]
        lines.append(f"| {e['model']} {e['runner']} batch {e['batch']} | {e['tokens']} | {e['seconds']:.1f} | "
                     f"{e['avg_power_W']:.0f} | {e['kWh_per_M_tokens']:.4f} | {e['decode_kWh_per_M_tokens']:.4f} "
                     f"(+/- {e['decode_uncertainty']:.0%}, {e['decode_seconds']:.1f} s) | "
                     f"{'yes' if e['reliable'] else 'no: ' + e['note']} |")
    if report.get("energy"):
        lines.append("")
    if report.get("energy_skipped"):
        lines += [f"Energy: skipped ({report['energy_skipped']})", ""]
    lines += [f"- skipped {s}" for s in report.get("skipped", [])]
    lines += [f"- FAILED {err['stage']}: {err['error']}" for err in report["errors"]]
    return "\n".join(lines) + "\n"


def _throughput_table(rows: list[dict]) -> list[str]:
    def f(r: dict | None, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r and key in r else "-"

    lines = ["| model | batch | decode tok/s engine | HF | engine/HF | engine % decode roofline | HF % | "
             "prefill tok/s engine | HF | engine % matmul peak | end-to-end engine/HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        for b in sorted({r["batch"] for r in rows if r["model"] == model}):
            got = {r["runner"]: r for r in rows if r["model"] == model and r["batch"] == b}
            en, hf = got.get("engine"), got.get("transformers")
            ratio = f"{en['decode_tokens_per_s'] / hf['decode_tokens_per_s']:.2f}" if en and hf else "-"
            e2e = f"{en['tokens_per_s'] / hf['tokens_per_s']:.2f}" if en and hf else "-"
            gb = (en or hf)["weight_bytes"] / 1e9
            lines.append(f"| {model} ({gb:.1f} GB) | {b} | {f(en, 'decode_tokens_per_s', '.0f')} | "
                         f"{f(hf, 'decode_tokens_per_s', '.0f')} | {ratio} | {f(en, 'decode_roofline_fraction', '.0%')} | "
                         f"{f(hf, 'decode_roofline_fraction', '.0%')} | {f(en, 'prefill_tokens_per_s', '.0f')} | "
                         f"{f(hf, 'prefill_tokens_per_s', '.0f')} | {f(en, 'prefill_roofline_fraction', '.0%')} | {e2e} |")
    r0 = rows[0]
    lines += ["", f"Prompts of {r0['prompt_len']} random token ids, {r0['output_len']} new tokens (greedy, ignore_eos), "
              "fresh prompts per run. Prefill = the 1-token run; decode step = (T_n - T_1) / (n - 1). Decode roofline: "
              "(weights + every sequence's KV cache at its mean length) / measured copy bandwidth per step; matmul "
              "peak: 2 x matmul params x prompt tokens / measured bf16 rate.", ""]
    return lines
