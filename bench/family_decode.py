"""Decode steps of the newer model families on CPU: our engine against transformers on the same shape, in the
same run, and against the memory floor.

    python -m bench.family_decode [--shape granite-moe|gemma3] [--batch 1] [--steps 32] [--layers N] [--threads 2]

Shapes: IBM's granite-3.1-1b-a400m, a mixture of experts (hidden 1024, 32 experts of width 512, 8 chosen per
token, a 49155-token vocabulary, tied embeddings); Google's gemma-3-1b (hidden 1152, 26 layers, 4 heads of
256, one KV head, local layers with a 512-token window, a 262144-token vocabulary, tied). --layers cuts
either shorter. Weights are random (--load-format dummy; transformers' own random init): the work per step
does not depend on their values, only which experts are chosen, and random routers spread tokens over the
experts as trained ones do. Both run bf16, greedy, from the same 32-token prompts; each times the decode
steps after the prefill (median). The floor is the bytes a step must read (attention and router weights,
the experts the batch chose, the MLPs, the output projection) over the bandwidth of a large copy measured here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "granite-moe": dict(architectures=["GraniteMoeForCausalLM"], model_type="granitemoe", hidden_size=1024,
                        intermediate_size=512, num_local_experts=32, num_experts_per_tok=8, num_attention_heads=16,
                        num_key_value_heads=8, num_hidden_layers=24, vocab_size=49155, max_position_embeddings=4096,
                        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, embedding_multiplier=12.0,
                        residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=6.0, bos_token_id=0,
                        eos_token_id=0, initializer_range=0.02),
    "gemma3": dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_size=1152,
                   intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1,
                   head_dim=256, query_pre_attn_scalar=256, sliding_window=512, vocab_size=262144,
                   max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   rope_local_base_freq=10000.0, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
                   initializer_range=0.02),
}
PROMPT_LEN = 32


def write_folder(folder: Path, shape: str, layers: int | None) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = SHAPES[shape] | ({"num_hidden_layers": layers} if layers else {})
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(config["vocab_size"])}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return config


def prompts(batch: int, vocab_size: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab_size, (PROMPT_LEN,), generator=gen).tolist() for _ in range(batch)]


def ours(folder: Path, config: dict, batch: int, steps: int) -> list[float]:
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    engine = LLMEngine(str(folder), EngineConfig(dtype=torch.bfloat16, load_format="dummy", max_num_seqs=batch))
    params = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    for i, prompt in enumerate(prompts(batch, config["vocab_size"])):
        engine.add_request(str(i), prompt, params)
    times: list[float] = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return times[-steps:]  # the decode steps; the first step(s) ran the prefill


def transformers_steps(config: dict, batch: int, steps: int) -> list[float]:
    import transformers

    hf_config = transformers.AutoConfig.for_model(**config)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
    ids = torch.tensor(prompts(batch, config["vocab_size"]))
    times: list[float] = []
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            start = time.perf_counter()
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - start)
    return times


def copy_bandwidth() -> float:
    """Bytes/s of a 512 MiB copy (read + write), the best of five."""
    src = torch.ones(256 * 2**20, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def floor_bytes(config: dict, batch: int) -> int:
    """bf16 bytes one decode step reads at least: every layer's attention and MLP (for a mixture of experts
    its router and the distinct experts the batch chose: at most top_k per token, all of them at most), the
    output projection. The KV cache a step reads is left out (under 1% here)."""
    h, i = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    attention = h * head_dim * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"])
    e = config.get("num_local_experts", 0)
    mlp = e * h + min(e, config["num_experts_per_tok"] * batch) * 3 * h * i if e else 3 * h * i
    return 2 * (config["num_hidden_layers"] * (attention + mlp) + config["vocab_size"] * h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="granite-moe")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_folder(Path(tmp), args.shape, args.layers)
        our = statistics.median(ours(Path(tmp), config, args.batch, args.steps))
    peer = statistics.median(transformers_steps(config, args.batch, args.steps))
    floor = floor_bytes(config, args.batch) / copy_bandwidth()
    print(f"{args.shape} shape, {config['num_hidden_layers']} layers, batch {args.batch}, {args.steps} decode "
          f"steps, {torch.get_num_threads()} threads")
    print(f"  ours          {our * 1e3:8.2f} ms/step  {args.batch / our:8.1f} tok/s")
    print(f"  transformers  {peer * 1e3:8.2f} ms/step  {args.batch / peer:8.1f} tok/s")
    print(f"  memory floor  {floor * 1e3:8.2f} ms/step")
    print(f"  ours vs transformers: {peer / our:.2f}x faster; floor / ours: {floor / our:.2f}")


if __name__ == "__main__":
    main()
