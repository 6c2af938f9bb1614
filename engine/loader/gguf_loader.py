"""Load a llama.cpp GGUF file (llama, qwen2, qwen3, granite or phi3, and the mixtures of experts: llama with
experts (Mixtral), qwen3moe and granitemoe) into a ModelConfig and HF-named torch tensors."""
from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType

from engine.config import ModelConfig
from engine.loader.errors import ModelLoadError
from engine.loader.fused_layout import split_fused_projections
from engine.loader.gguf_metadata import read_gguf_metadata
from engine.loader.gguf_quants import UnsupportedQuantError, dequantize
from engine.loader.llama_layout import check_shapes, expected_shapes
from engine.loader.moe_layout import unstack_experts

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "granite", "phi3", "qwen3moe", "granitemoe", "gemma3")
# llama.cpp's converter interleaves Q/K rows for ggml's normal rope only in these (LlamaModel.permute, which
# GraniteModel and the Mixtral a llama file holds inherit); qwen2 and qwen3 run NEOX rope, which is HF's
# rotate_half layout, and keep their rows. (ModelConfig.architecture names: a llama file with experts is "mixtral".)
_ROTARY_PERMUTED = ("llama", "granite", "mixtral", "granitemoe")

# Llama 3.1-style GGUFs carry their llama3 rope scaling as this precomputed tensor (see load_gguf).
ROPE_FREQS = "rope_freqs"

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": ROPE_FREQS,
}
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    # A MoE layer's router, and its experts' projections stacked (E, rows, cols): loader/moe_layout.py splits them.
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
# llama.cpp's phi3 (Phi-3, Phi-4) keeps HF's fused projections: attn_qkv is qkv_proj, and its ffn_up is
# gate_up_proj, gate rows first (ggml_swiglu takes the silu operand from the first half), not up_proj.
_PHI3_BLOCK_TENSORS = _BLOCK_TENSORS | {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# Gemma 3's four norms a layer: its ffn_norm is the one before the MLP, and the attention's and the MLP's outputs
# have their own. (llama.cpp's converter stores each gain as 1 + w, as engine/models/gemma3.py holds them.)
_GEMMA3_BLOCK_TENSORS = _BLOCK_TENSORS | {"ffn_norm": "pre_feedforward_layernorm",
                                          "post_attention_norm": "post_attention_layernorm",
                                          "post_ffw_norm": "post_feedforward_layernorm"}
# Phi-3's longrope scaling (the 128k models), per-dimension rotary factors the decoder does not apply.
_LONGROPE_TENSORS = {"rope_factors_long.weight", "rope_factors_short.weight"}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# weights[name + Q4_1_SUFFIX]: a linear weight's own Q4_1 blocks, kept when asked (see load_gguf).
Q4_1_SUFFIX = ":q4_1"
_LINEARS = ("_proj.weight", "lm_head.weight")


def load_gguf(path: str, dtype: torch.dtype,
              keep_q4_1: bool = False) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, object]]:
    """Read a GGUF file: (config, weights with HF Llama names in `dtype`, all metadata key/values).

    Weights are dequantized, reshaped to torch order and, in a llama or granite file, have llama.cpp's Q/K
    rotary row permutation undone, so they equal a Hugging Face checkpoint's; a phi3 file's fused q/k/v and
    gate/up projections come split into Llama's names, as the HF loader splits Phi-3's. A qwen2 file sets
    config.qkv_bias (q/k/v projection biases), a qwen3 file config.qk_norm (per-head q/k norms), a granite
    file config's four Granite scales (see _granite_scales). A file with a
    `rope_freqs.weight` tensor (the form llama.cpp stores Llama 3.1's "llama3" rope scaling in) yields an
    extra float32 tensor weights["rope_freqs"] of shape (head_dim // 2,): per-dimension divisors of the
    default rotary frequencies, inv_freq[i] = rope_theta ** (-2 i / head_dim) / rope_freqs[i];
    config.rope_scaling is then None. With keep_q4_1, each linear weight stored in Q4_1 also comes as its
    raw blocks, weights[name + Q4_1_SUFFIX]: uint8 (out_features, in_features / 32 * 20), rows in the
    weight's (unpermuted, split) order, for the CPU kernel that reads them at decode (engine/kernels/linear.py).
    Raises ModelLoadError for anything unreadable or unsupported.
    """
    reader, metadata = _read(path)
    config = _config(metadata, {t.name for t in reader.tensors}, path)
    # ggml lists dimensions fastest-varying first: ggml [in, out] is torch (out, in)
    shapes = {_hf_name(t.name, config.architecture, path): tuple(int(d) for d in reversed(t.shape.tolist()))
              for t in reader.tensors}
    expected = expected_shapes(config)
    if ROPE_FREQS in shapes:
        expected[ROPE_FREQS] = (config.head_dim // 2,)
    check_shapes(_split_shapes(shapes, config), expected, path)  # before the costly dequantization
    return config, _weights(reader, config, shapes, dtype, path, keep_q4_1), metadata


def _read(path: str) -> tuple[gguf.GGUFReader, dict[str, object]]:
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: GGUF file not found")
    try:
        reader = gguf.GGUFReader(path)
        return reader, read_gguf_metadata(reader)
    except Exception as e:  # gguf-py reports corruption as whatever numpy raised while parsing
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _config(meta: dict[str, object], tensor_names: set[str], path: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if tensor_names & _LONGROPE_TENSORS:
        raise ModelLoadError(f"{path}: longrope rotary scaling (tensors rope_factors_long/short, as in Phi-3's "
                             "128k-context models) is unsupported")

    def get(key: str, kind: type | tuple[type, ...], default: object = None) -> object:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"{path}: missing metadata key {arch}.{key}")
        if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
            raise ModelLoadError(f"{path}: metadata key {arch}.{key} is {value!r}, expected a positive number")
        return value

    real = (int, float)
    hidden = get("embedding_length", int)
    num_heads = get("attention.head_count", int)
    head_dim = get("attention.key_length", int, hidden // num_heads)
    if get("attention.value_length", int, head_dim) != head_dim:
        raise ModelLoadError(f"{path}: attention value_length differs from key_length; unsupported")
    if head_dim % 2 or get("rope.dimension_count", int, head_dim) != head_dim:
        raise ModelLoadError(f"{path}: rotary embeddings over an odd head_dim or a part of it are unsupported")
    tokens = meta.get("tokenizer.ggml.tokens")
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    experts = _experts(meta, str(arch), get, path) if f"{arch}.expert_count" in meta else {}
    # llama.cpp stores Mixtral as llama with experts; its config is Mixtral's
    name = "mixtral" if arch == "llama" and experts else str(arch)
    return ModelConfig(
        architecture=name,
        vocab_size=get("vocab_size", int, len(tokens) if isinstance(tokens, list) else None),
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length", int),
        num_layers=get("block_count", int),
        num_heads=num_heads,
        num_kv_heads=get("attention.head_count_kv", int, num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", real)),
        rope_theta=float(get("rope.freq_base", real, 10000.0)),
        max_position_embeddings=get("context_length", int),
        tie_word_embeddings="output.weight" not in tensor_names,
        rope_scaling=_rope_scaling(meta, str(arch), path),
        bos_token_id=bos_id if isinstance(bos_id, int) else None,
        eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if isinstance(i, int))),
        qkv_bias=arch == "qwen2",  # llama.cpp's qwen2 always has q/k/v biases, as HF's Qwen2 does
        qk_norm=arch in ("qwen3", "qwen3moe", "gemma3"),
        **(_granite_scales(meta, str(arch), get) if arch in ("granite", "granitemoe") else {}),
        **experts,
        **(_gemma3(get, hidden, num_heads, head_dim) if arch == "gemma3" else _window(meta, str(arch), get)),
    )


def _gemma3(get: Callable[..., object], hidden: int, num_heads: int, head_dim: int) -> dict[str, object]:
    """Gemma 3 as llama.cpp's gemma3 computes it, which its files do not spell out: every sixth layer global,
    the others local at base frequency 10000; scores scaled by head_dim ** -0.5, but by (hidden / heads) ** -0.5
    in the 62-layer 27B (query_pre_attn_scalar in its config.json)."""
    num_layers = get("block_count", int)
    scalar = hidden // num_heads if num_layers == 62 else head_dim
    return {"hidden_act": "gelu_tanh", "embedding_multiplier": math.sqrt(hidden), "attention_multiplier": scalar ** -0.5,
            "sliding_window": get("attention.sliding_window", int),
            "sliding_layers": tuple(i for i in range(num_layers) if (i + 1) % 6), "rope_local_theta": 10_000.0}


def _experts(meta: dict[str, object], arch: str, get: Callable[..., object], path: str) -> dict[str, object]:
    """ModelConfig's mixture-of-experts fields. Every layer is sparse in llama.cpp's MoE architectures, and its
    llama, qwen3moe and granitemoe graphs renormalise the chosen experts' weights unless the file says not to.
    Qwen3-MoE's experts have their own size (expert_feed_forward_length); Mixtral's and Granite's are the
    feed_forward_length."""
    num_experts = get("expert_count", int)
    top_k = get("expert_used_count", int)
    if top_k > num_experts:
        raise ModelLoadError(f"{path}: {arch}.expert_used_count {top_k} exceeds {arch}.expert_count {num_experts}")
    if f"{arch}.expert_shared_count" in meta or f"{arch}.expert_shared_feed_forward_length" in meta:
        raise ModelLoadError(f"{path}: shared experts are unsupported")
    return {"num_experts": num_experts, "num_experts_per_tok": top_k,
            "moe_intermediate_size": get("expert_feed_forward_length", int, get("feed_forward_length", int)),
            "norm_topk_prob": bool(meta.get(f"{arch}.expert_weights_norm", True))}


def _granite_scales(meta: dict[str, object], arch: str, get: Callable[..., object]) -> dict[str, float | None]:
    """ModelConfig's Granite scales, missing keys read as llama.cpp's granite reads them: no logit_scale is an
    error, no embedding or residual scale means none, no attention scale means head_dim ** -0.5. (Its
    converter writes all four: transformers' config.json always has them, each 1.0 by default.)"""
    real = (int, float)
    return {
        "embedding_multiplier": float(get("embedding_scale", real, 1.0)),
        "residual_multiplier": float(get("residual_scale", real, 1.0)),
        "attention_multiplier": float(get("attention.scale", real)) if f"{arch}.attention.scale" in meta else None,
        "logits_scaling": float(get("logit_scale", real)),
    }


def _window(meta: dict[str, object], arch: str, get: Callable[..., object]) -> dict[str, object]:
    """Local attention in every layer where the file gives a window (Phi-3-mini's); llama.cpp's phi3
    converter writes 0 for none (Phi-4)."""
    window = meta.get(f"{arch}.attention.sliding_window")
    if not isinstance(window, int) or window <= 0:
        return {}
    return {"sliding_window": window, "sliding_layers": tuple(range(get("block_count", int)))}


def _rope_scaling(meta: dict[str, object], arch: str, path: str) -> dict | None:
    """Map llama.cpp's rope scaling keys back to a Hugging Face `rope_scaling` dict."""
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if kind is None and factor is not None:
        kind = "linear"  # older files only wrote rope.scale_linear
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling: dict = {"rope_type": "yarn", "factor": float(factor)}
        original = meta.get(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = original
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if f"{arch}.rope.scaling.{gguf_key}" in meta:
                scaling[hf_key] = float(meta[f"{arch}.rope.scaling.{gguf_key}"])
        return scaling
    raise ModelLoadError(f"{path}: unsupported rope scaling type {kind!r}")


def _weights(
    reader: gguf.GGUFReader, config: ModelConfig, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, path: str,
    keep_q4_1: bool,
) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for tensor, (name, shape) in zip(reader.tensors, shapes.items()):
        try:
            value = dequantize(tensor.data, tensor.tensor_type, shape)
        except UnsupportedQuantError as e:
            raise ModelLoadError(f"{path}: tensor {tensor.name}: unsupported quantization: {e}") from e
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: tensor {tensor.name} is corrupt ({e})") from e
        blocks = None
        if (keep_q4_1 and tensor.tensor_type == GGMLQuantizationType.Q4_1 and name.endswith(_LINEARS)
                and len(shape) == 2):  # (not the stacked experts', which the bf16 kernel reads)
            blocks = _file_bytes(tensor.data).reshape(shape[0], -1)
        n_head = _permuted_heads(name, config)
        if n_head is not None:
            value = _unpermute_rotary_rows(value, n_head)
            blocks = None if blocks is None else _unpermute_rotary_rows(blocks, n_head)
        weights[name] = value if name == ROPE_FREQS else value.to(dtype)
        if blocks is not None:
            weights[name + Q4_1_SUFFIX] = blocks.contiguous()
    _split_layout(weights, config)
    if config.architecture == "phi3":
        split_fused_projections(weights, config, Q4_1_SUFFIX)
    return weights


def _split_layout(weights: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """A phi3 file's fused projections split, a MoE file's stacked experts too."""
    if config.architecture == "phi3":
        split_fused_projections(weights, config)
    if config.num_experts:
        unstack_experts(weights)


def _split_shapes(shapes: dict[str, tuple[int, ...]], config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes _weights returns. Meta tensors have shapes and no data, so _split_layout itself
    splits them, as it will the weights."""
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    _split_layout(meta, config)
    return {name: tuple(t.shape) for name, t in meta.items()}


def _file_bytes(data: np.ndarray) -> torch.Tensor:
    """The raw bytes of a tensor's data as a read-only view of the memory-mapped file: no copy (they
    are only read, when packed, and a copy would stay behind in the heap after packing frees it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the view is not writable
        return torch.from_numpy(data.view(np.uint8).reshape(-1))


def _hf_name(gguf_name: str, arch: str, path: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    block_tensors = {"phi3": _PHI3_BLOCK_TENSORS, "gemma3": _GEMMA3_BLOCK_TENSORS}.get(arch, _BLOCK_TENSORS)
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match.group(2) not in block_tensors:
        raise ModelLoadError(f"{path}: unsupported tensor {gguf_name}")
    layer, kind, param = match.groups()
    return f"model.layers.{layer}.{block_tensors[kind]}.{param}"


def _permuted_heads(name: str, config: ModelConfig) -> int | None:
    """The number of heads whose rows llama.cpp interleaved in tensor `name`, or None if it kept HF's order."""
    if config.architecture not in _ROTARY_PERMUTED:
        return None
    if name.endswith("self_attn.q_proj.weight"):
        return config.num_heads
    if name.endswith("self_attn.k_proj.weight"):
        return config.num_kv_heads
    return None


def _unpermute_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleave, restoring HF's rotate_half layout.

    llama.cpp's converter does w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2); this is its inverse.
    """
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
