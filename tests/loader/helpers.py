"""Test helpers: tiny Llama configs, Qwen, Granite and Phi-3 models, llama.cpp's conversion steps, random
GGML blocks, and our engine's prefill logits."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from transformers import (GraniteConfig, GraniteForCausalLM, LlamaConfig, Phi3Config, Phi3ForCausalLM,
                          PretrainedConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig
from engine.forward_context import forward_context
from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.llama_layout import expected_shapes
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# The model types whose Q/K rows llama.cpp's converter permutes (LlamaModel and its subclasses: GraniteModel,
# GraniteMoeModel, and LlamaModel itself converting Mixtral).
_PERMUTED_TYPES = ("llama", "granite", "mixtral", "granitemoe")
# general.architecture by model_type, where llama.cpp's differs.
_GGUF_ARCHITECTURES = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "gemma3_text": "gemma3"}

# Byte offsets of each block's fp16 scale/min fields; random bytes there would often be inf/NaN.
F16_FIELDS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    GGMLQuantizationType.Q4_0: (0,),
    GGMLQuantizationType.Q4_1: (0, 2),
    GGMLQuantizationType.Q5_0: (0,),
    GGMLQuantizationType.Q5_1: (0, 2),
    GGMLQuantizationType.Q8_0: (0,),
    GGMLQuantizationType.Q2_K: (80, 82),
    GGMLQuantizationType.Q3_K: (108,),
    GGMLQuantizationType.Q4_K: (0, 2),
    GGMLQuantizationType.Q5_K: (0, 2),
    GGMLQuantizationType.Q6_K: (208,),
}

_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    # Phi-3's fused projections: llama.cpp keeps them, its ffn_up holding gate_up_proj
    "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",
    # A MoE layer's router and its experts' stacked projections (see moe_checkpoint_tensors)
    "mlp.gate": "ffn_gate_inp", "mlp.experts.gate_proj": "ffn_gate_exps", "mlp.experts.up_proj": "ffn_up_exps",
    "mlp.experts.down_proj": "ffn_down_exps",
}
# Gemma 3's norms (llama.cpp's ffn_norm is its pre_feedforward_layernorm)
_GEMMA3_NAMES = _BLOCK_NAMES | {"pre_feedforward_layernorm": "ffn_norm", "post_attention_layernorm": "post_attention_norm",
                                "post_feedforward_layernorm": "post_ffw_norm"}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    kwargs: dict = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, rope_scaling=dict(ROPE_SCALING),
        max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    return LlamaConfig(**(kwargs | overrides))


def tiny_qwen_model(arch: str) -> PreTrainedModel:
    """A random tiny Qwen2 (q/k/v biases, untied) or Qwen3 (q/k norms, tied, head_dim 16 where
    hidden / heads is 8). Biases and norm gains are random too: transformers starts them at 0 and 1,
    which would hide a dropped or swapped one."""
    common: dict = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
                        bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        model: PreTrainedModel = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, tie_word_embeddings=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1)
    return model.eval()


def tiny_granite_model() -> PreTrainedModel:
    """A random tiny Granite (tied, as Granite 3.x is) with scales far from 1 and an attention
    multiplier that is not head_dim ** -0.5 (which is 8 ** -0.5 here); random norm gains. Weights are
    drawn with std 0.2, not transformers' 0.02, under which attention scores stay so near 0 that the
    logits hardly change with the attention scale or with Q/K rows left permuted."""
    config = GraniteConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, bos_token_id=1,
                           eos_token_id=2, tie_word_embeddings=True, embedding_multiplier=12.0,
                           residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=8.0,
                           initializer_range=0.2)
    model = GraniteForCausalLM(config)
    return random_norms(model, 1.0, 0.1)


def tiny_moe_model(model_type: str) -> PreTrainedModel:
    """A random tiny mixture of experts as llama.cpp converts it: Mixtral, Qwen3-MoE (renormalised, every layer
    sparse, as llama.cpp's qwen3moe computes) or Granite MoE (tied, Granite's scales). std 0.2 weights, as
    tiny_granite_model's, so that routing differs token to token; random norm gains."""
    import transformers

    common: dict = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                        vocab_size=300, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                        num_experts_per_tok=2, initializer_range=0.2)
    if model_type == "mixtral":
        model: PreTrainedModel = transformers.MixtralForCausalLM(transformers.MixtralConfig(
            **common, intermediate_size=64, num_local_experts=6, tie_word_embeddings=False))
    elif model_type == "qwen3_moe":
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            **common, intermediate_size=96, moe_intermediate_size=32, num_experts=6, head_dim=16,
            norm_topk_prob=True, tie_word_embeddings=False))
    else:
        model = transformers.GraniteMoeForCausalLM(transformers.GraniteMoeConfig(
            **common, intermediate_size=32, num_local_experts=5, tie_word_embeddings=True,
            embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=8.0))
    return random_norms(model, 1.0, 0.1)


def tiny_gemma3_model() -> PreTrainedModel:
    """A random tiny Gemma 3 (7 layers: the sixth global, the rest local with a 12-token window; linear rope
    scaling on the global ones; query_pre_attn_scalar = head_dim, as all sizes but the 27B have), std 0.2
    weights, random norm weights (Gemma starts them at 0: gains of 1)."""
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=12, max_position_embeddings=256,
        bos_token_id=2, eos_token_id=1, initializer_range=0.2, rope_scaling={"rope_type": "linear", "factor": 4.0})
    model = transformers.Gemma3ForCausalLM(config)
    return random_norms(model, 0.0, 0.3)


def tiny_phi3_model() -> PreTrainedModel:
    """A random tiny Phi-3 (untied, GQA so that q, k and v split unevenly, a sliding window shorter than
    its context as Phi-3-mini's), std 0.2 weights as tiny_granite_model's, random norm gains."""
    config = Phi3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
                        original_max_position_embeddings=256, sliding_window=64, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, initializer_range=0.2)
    model = Phi3ForCausalLM(config)
    return random_norms(model, 1.0, 0.1)


def random_norms(model: PreTrainedModel, mean: float, std: float) -> PreTrainedModel:
    """`model` in eval mode, its norm weights drawn ~ N(mean, std): transformers starts them all alike,
    which would hide a dropped or swapped one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(mean, std)
    return model.eval()


def checkpoint_tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The float32 tensors save_pretrained writes, which llama.cpp's converter reads: a tied lm_head is not one.
    A mixture of experts' come with each layer's experts stacked per projection, as llama.cpp's converter
    merges them: mlp.experts.{gate,up,down}_proj.weight (E, rows, cols), the router as mlp.gate.weight."""
    tensors = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name in list(tensors):
        prefix, _, rest = name.partition("block_sparse_moe.")
        if rest == "router.weight":  # Granite MoE's, in transformers 5's names
            tensors[prefix + "mlp.gate.weight"] = tensors.pop(name)
        if rest.startswith("experts."):
            tensors[prefix + "mlp." + rest] = tensors.pop(name)
    for name in [n for n in tensors if n.endswith("mlp.experts.gate_up_proj")]:
        gate, up = tensors.pop(name).chunk(2, dim=1)  # transformers 5's stacked (E, 2I, H), gate rows first
        stem = name.removesuffix("gate_up_proj")
        tensors[stem + "gate_proj.weight"], tensors[stem + "up_proj.weight"] = gate.contiguous(), up.contiguous()
        tensors[stem + "down_proj.weight"] = tensors.pop(stem + "down_proj")
    return tensors


@dataclass(frozen=True)
class TinyGguf:
    folder: Path  # save_pretrained output
    model: PreTrainedModel
    tensors: dict[str, torch.Tensor]  # the checkpoint's, float32
    gguf: Path  # their F32 conversion, as llama.cpp's converter writes it


def tiny_gguf(factory: pytest.TempPathFactory, name: str, model: PreTrainedModel) -> TinyGguf:
    """`model` saved as a Hugging Face folder and converted to an F32 GGUF beside it."""
    folder = factory.mktemp(f"tiny_{name}")
    model.save_pretrained(folder)
    tensors = checkpoint_tensors(model)
    path = factory.mktemp(f"tiny_{name}_gguf") / "tiny.gguf"
    write_llama_gguf(path, model.config, tensors)
    return TinyGguf(folder, model, tensors, path)


def quantized_gguf(model: TinyGguf, qtype: GGMLQuantizationType, folder: Path) -> Path:
    """`model` written with every matrix in `qtype` (norms and biases F32)."""
    def encode(w: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
        return gguf.quants.quantize(w, qtype), qtype

    path = folder / f"{qtype.name}.gguf"
    write_llama_gguf(path, model.model.config, model.tensors, encode)
    return path


def load_quantized(model: TinyGguf, qtype: GGMLQuantizationType, folder: Path
                   ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`model` written with every matrix in `qtype` (norms and biases F32), then loaded with its Q4_1
    blocks kept: (config, weights, the kept blocks by weight name). The shapes are checked here."""
    config, loaded, _ = load_gguf(str(quantized_gguf(model, qtype, folder)), torch.float32, keep_q4_1=True)
    weights = {name: w for name, w in loaded.items() if not name.endswith(Q4_1_SUFFIX)}
    assert {name: tuple(w.shape) for name, w in weights.items()} == expected_shapes(config)
    kept = {name.removesuffix(Q4_1_SUFFIX): w for name, w in loaded.items() if name.endswith(Q4_1_SUFFIX)}
    return config, weights, kept


def prefill_logits(config: ModelConfig, weights: dict[str, torch.Tensor], prompt: list[int],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Our engine's float32 logits at every position of `prompt`, computed in one prefill step by a model
    in `dtype` (in bfloat16 on a CPU with the Q4_1 kernel, a prompt of up to 4 tokens is a step of the
    rows that read the kept Q4_1 blocks)."""
    engine_config = EngineConfig(block_size=8, kv_cache_bytes=4 * 2**20, dtype=dtype)
    runner = ModelRunner(config, weights, engine_config)
    seq = Sequence(seq_id=0, request_id="0", index=0, token_ids=list(prompt), num_prompt_tokens=len(prompt),
                   params=SamplingParams(), max_num_tokens=len(prompt) + 1)
    assert BlockManager(runner.num_blocks, engine_config.block_size).allocate(seq, len(prompt))
    batch = ScheduledBatch(seqs=[seq], num_new_tokens=[len(prompt)])
    input_ids, positions, metadata, _, _ = runner._prepare(batch)
    with torch.inference_mode(), forward_context(metadata):
        return runner.model.compute_logits(runner.model(input_ids, positions))


def random_blocks(rng: np.random.Generator, n_blocks: int, qtype: GGMLQuantizationType) -> np.ndarray:
    """(n_blocks, type_size) random but valid blocks: random bits, finite fp16 scales in [-0.1, 0.1]."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        scales = rng.uniform(-0.1, 0.1, size=(n_blocks, 1)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8)
    return blocks


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute for q_proj / k_proj rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: LlamaConfig) -> np.ndarray:
    """llama.cpp's rope_freqs.weight for a "llama3" rope scaling (convert_hf_to_gguf.py)."""
    rs, dim = cfg.rope_parameters, cfg.head_dim
    freqs = 1.0 / (rs["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    old_ctx = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / rs["low_freq_factor"], old_ctx / rs["high_freq_factor"]
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rs["factor"])
        else:
            smooth = (old_ctx / wavelen - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / rs["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def gguf_tensor_name(hf_name: str, model_type: str = "llama") -> str:
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{layer}.{(_GEMMA3_NAMES if model_type == 'gemma3_text' else _BLOCK_NAMES)[module]}.{param}"


def llamacpp_matrix(name: str, w: np.ndarray, cfg: PretrainedConfig) -> np.ndarray:
    """An HF weight as llama.cpp's converter stores it (before quantization). Only its LlamaModel (and
    GraniteModel, a subclass) permutes Q/K rows; Qwen2Model and Qwen3Model (NEOX rotary) keep HF's order."""
    if cfg.model_type not in _PERMUTED_TYPES:
        return w
    if name.endswith("q_proj.weight"):
        return llamacpp_permute(w, cfg.num_attention_heads)
    if name.endswith("k_proj.weight"):
        return llamacpp_permute(w, cfg.num_key_value_heads)
    return w


Encoder = Callable[[np.ndarray], tuple[np.ndarray, GGMLQuantizationType | None]]


def raw_f32(w: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    return np.ascontiguousarray(w, dtype=np.float32), None


def write_llama_gguf(
    path: Path, cfg: PretrainedConfig, state: dict[str, torch.Tensor], encode_matrix: Encoder = raw_f32,
    arch: str | None = None, rope_freqs: bool = True,
) -> None:
    """Convert an HF Llama, Qwen2, Qwen3, Granite or Phi-3 state dict like llama.cpp: general.architecture
    `arch` (default the config's model_type), Q/K permuted for llama and granite, Granite's multipliers as
    its scales, Phi-3's keys and longrope factors, 2-D tensors through `encode_matrix` (-> data, GGML type
    for GGUFWriter's raw_dtype), 1-D tensors in F32, rope_freqs for llama3 scaling."""
    writer = gguf.GGUFWriter(path, arch or _GGUF_ARCHITECTURES.get(cfg.model_type, cfg.model_type))
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)  # Gemma 3's per layer type
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    # llama.cpp writes these where config.json has head_dim (GraniteConfig has none; GraniteModel drops one)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if cfg.model_type in _PERMUTED_TYPES:  # only LlamaModel writes these; a Qwen file's vocab size is its token count
        writer.add_rope_dimension_count(head_dim or cfg.hidden_size // cfg.num_attention_heads)
        writer.add_vocab_size(cfg.vocab_size)
    if cfg.model_type in ("granite", "granitemoe"):
        _add_granite_scales(writer, cfg)
    if cfg.model_type == "gemma3_text":  # Gemma3Model: the window, the global layers' rope scaling
        writer.add_sliding_window(cfg.sliding_window)
        scaling = cfg.rope_parameters["full_attention"]
        if scaling.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
    num_experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if num_experts:  # TextModel.set_gguf_parameters, and Qwen3MoeModel's expert size
        writer.add_expert_count(num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        if cfg.model_type == "qwen3_moe":
            writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if cfg.model_type == "phi3":
        _add_phi3_parameters(writer, cfg)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_chat_template("{{ messages }}")
    for name, tensor in state.items():
        w = llamacpp_matrix(name, tensor.float().numpy(), cfg)
        if cfg.model_type == "gemma3_text" and name.endswith("norm.weight"):
            w = w + 1  # Gemma3Model.modify_tensors: Gemma's gains are 1 + w
        data, qtype = encode_matrix(w) if w.ndim >= 2 else raw_f32(w)
        writer.add_tensor(gguf_tensor_name(name, cfg.model_type), data, raw_dtype=qtype)
    if rope_freqs and rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_phi3_parameters(writer: gguf.GGUFWriter, cfg: Phi3Config) -> None:
    """What Phi3MiniModel writes besides the common keys (no key_length or vocab_size): the rotary
    dimensions, the original context, the sliding window (0 for none) and, for longrope, its factors."""
    rope = cfg.rope_parameters
    writer.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * cfg.hidden_size)
                                    // cfg.num_attention_heads)
    writer.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
    writer.add_sliding_window(cfg.sliding_window or 0)
    if rope.get("long_factor"):  # (and an attention factor, which the loader never gets to)
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))


def _add_granite_scales(writer: gguf.GGUFWriter, cfg: GraniteConfig) -> None:
    """GraniteModel.set_gguf_parameters: each multiplier config.json sets, if not 0 or None, as llama.cpp's scale."""
    for value, add in ((cfg.attention_multiplier, writer.add_attention_scale),
                       (cfg.embedding_multiplier, writer.add_embedding_scale),
                       (cfg.residual_multiplier, writer.add_residual_scale),
                       (cfg.logits_scaling, writer.add_logit_scale)):
        if value:
            add(value)
