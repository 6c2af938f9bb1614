"""Load a Hugging Face Llama, Mistral, Qwen2, Qwen3, Granite or Phi-3/Phi-4 checkpoint folder, or one of
the mixtures of experts Mixtral, Qwen3-MoE and Granite MoE (config.json + safetensors)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.config import ModelConfig
from engine.loader import gemma3_layout, multimodal_layout
from engine.loader.encoder_layout import ENCODER_ARCHITECTURES, ENCODER_MODEL_TYPES, encoder_config, encoder_weights
from engine.loader.errors import ModelLoadError
from engine.loader.fused_layout import split_fused_projections
from engine.loader.llama_layout import check_shapes, expected_shapes
from engine.loader.multimodal_layout import TEXT_ARCHITECTURES, language_weights
from engine.loader.moe_layout import unstack_experts

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                           "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "GraniteForCausalLM": "granite",
                           "Phi3ForCausalLM": "phi3", "MixtralForCausalLM": "mixtral",
                           "Qwen3MoeForCausalLM": "qwen3moe", "GraniteMoeForCausalLM": "granitemoe",
                           # Gemma 3's text decoder; of the multimodal sizes, their language model alone
                           "Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3",
                           # Bare decoders, as embedding models ship (Qwen3-Embedding): no lm_head,
                           # tensor names without the "model." prefix.
                           "LlamaModel": "llama", "MistralModel": "llama", "Qwen2Model": "qwen2",
                           "Qwen3Model": "qwen3"}
_SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                          "granite": "granite", "phi3": "phi3", "mixtral": "mixtral", "qwen3_moe": "qwen3moe",
                          "granitemoe": "granitemoe", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_ROPE_TYPES = ("default", "linear", "llama3")  # what engine/models/layers.py rope_inv_freq computes
_INDEX_FILE = "model.safetensors.index.json"


def load_hf_folder(path: str, dtype: torch.dtype, lm_head: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config.json and the safetensors weights (single or sharded) of the folder `path`.

    Weights come back in `dtype` with their Hugging Face names (a bare decoder's given the "model."
    prefix); a tied checkpoint's lm_head.weight, if stored, is dropped, and so is any with lm_head
    False (an embedding model, which needs none). Raises ModelLoadError for anything missing,
    unreadable or unsupported.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{path}: model folder not found")
    raw = read_json(folder / "config.json")
    config = config_from_hf(raw, path, generation_eos(folder))
    weights = _read_safetensors(folder)
    weights = _with_model_prefix(language_weights(weights)) if config.causal else encoder_weights(weights)
    if config.architecture == "gemma3":
        weights = gemma3_layout.offset_norms(weights)
    if multimodal_layout.is_wrapper(raw) and "lm_head.weight" not in weights and not config.tie_word_embeddings:
        # Its text_config says untied, the top level (which transformers 5 follows) tied: the file decides
        config = dataclasses.replace(config, tie_word_embeddings=True)
    for name in [n for n in weights if n.endswith("rotary_emb.inv_freq")]:
        del weights[name]  # a buffer older checkpoints saved; recomputed from the config
    if config.tie_word_embeddings or not lm_head:
        weights.pop("lm_head.weight", None)
    if config.architecture == "phi3":
        split_fused_projections(weights, config)
    if config.num_experts:
        unstack_experts(weights)
    check_shapes({name: tuple(t.shape) for name, t in weights.items()}, expected_shapes(config, lm_head), path)
    return config, {name: t.to(dtype) for name, t in weights.items()}


def _with_model_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A bare decoder's tensors (LlamaModel, Qwen3Model: `embed_tokens.weight`, `layers.0...`)
    under the names of the causal LM that wraps it (`model.embed_tokens.weight`, ...)."""
    if "embed_tokens.weight" not in weights or "model.embed_tokens.weight" in weights:
        return weights
    return {name if name.startswith("lm_head.") else f"model.{name}": t for name, t in weights.items()}


def config_from_hf(raw: dict, path: str, extra_eos: tuple[int, ...] = ()) -> ModelConfig:
    """ModelConfig from a parsed config.json; `extra_eos` (from generation_config.json) extends its eos ids."""
    architectures = raw.get("architectures") or []
    encoder = next((ENCODER_ARCHITECTURES[a] for a in architectures if a in ENCODER_ARCHITECTURES), None)
    if encoder is None and not architectures:
        encoder = ENCODER_MODEL_TYPES.get(raw.get("model_type"))
    if encoder is not None:
        return encoder_config(raw, encoder, path)
    wrapped = next((TEXT_ARCHITECTURES[a] for a in architectures if a in TEXT_ARCHITECTURES), None)
    if wrapped is not None:  # a vision-language checkpoint: its language model, as text only
        return config_from_hf(multimodal_layout.text_config(raw, wrapped), path, extra_eos)
    arch = next((SUPPORTED_ARCHITECTURES[a] for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None and not architectures:
        arch = _SUPPORTED_MODEL_TYPES.get(raw.get("model_type"))
    if arch is None:
        found = architectures or raw.get("model_type")
        supported = ", ".join([*SUPPORTED_ARCHITECTURES, *TEXT_ARCHITECTURES, *ENCODER_ARCHITECTURES])
        raise ModelLoadError(f"{path}: unsupported architecture {found!r} (supported: {supported})")
    if arch == "gemma3":
        raw = gemma3_layout.text_config(raw)

    def get(key: str, default: object = None) -> object:
        value = raw.get(key)
        if value is None:
            value = default
        if value is None:
            raise ModelLoadError(f"{path}: config.json lacks {key!r}")
        return value

    # Variants the decoder does not run: refused here rather than served wrong.
    if raw.get("attention_bias"):
        raise ModelLoadError(f"{path}: attention_bias (biases on every attention projection) is unsupported")
    if arch != "gemma3" and raw.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ModelLoadError(f"{path}: hidden_act {raw['hidden_act']!r} is unsupported (the MLP's gate is SiLU)")
    if raw.get("mlp_bias"):
        raise ModelLoadError(f"{path}: mlp_bias (biases on the MLP projections) is unsupported")
    rope_parameters = raw.get("rope_parameters") or {}
    if float(rope_parameters.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ModelLoadError(f"{path}: rotary embeddings over part of each head (partial_rotary_factor) "
                             "are unsupported")
    hidden = int(get("hidden_size"))
    num_heads = int(get("num_attention_heads"))
    rope_theta, rope_scaling = _rope(raw, path)
    eos = get("eos_token_id", ())
    eos_ids = [eos] if isinstance(eos, int) else list(eos)
    return ModelConfig(
        architecture=arch,
        vocab_size=int(get("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(get("intermediate_size")),
        num_layers=int(get("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=int(get("num_key_value_heads", num_heads)),
        head_dim=int(get("head_dim", hidden // num_heads)),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        max_position_embeddings=int(get("max_position_embeddings")),
        # Llama's and Mistral's own default, not PretrainedConfig's (True)
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys([*eos_ids, *extra_eos])),
        qkv_bias=arch == "qwen2",  # Qwen2's q/k/v projections always have biases (its o_proj none)
        qk_norm=arch in ("qwen3", "qwen3moe", "gemma3"),
        **(_granite_scales(raw) if arch in ("granite", "granitemoe") else {}),
        **(_experts(raw, arch, path, int(get("num_hidden_layers"))) if arch in _MOE_ARCHITECTURES else {}),
        **(gemma3_layout.fields(raw, path) if arch == "gemma3" else _windows(raw, arch, int(get("num_hidden_layers")))),
    )


_MOE_ARCHITECTURES = ("mixtral", "qwen3moe", "granitemoe")


def _experts(raw: dict, arch: str, path: str, num_layers: int) -> dict[str, object]:
    """ModelConfig's mixture-of-experts fields. Qwen3-MoE sizes its experts by moe_intermediate_size
    (intermediate_size is its dense layers'), chooses which layers are sparse (decoder_sparse_step,
    mlp_only_layers) and whether to renormalise (norm_topk_prob, False by transformers' default);
    Mixtral and Granite MoE renormalise, and every layer is sparse."""
    num_experts = raw.get("num_experts") or raw.get("num_local_experts")
    top_k = raw.get("num_experts_per_tok")
    if not isinstance(num_experts, int) or not isinstance(top_k, int) or not 0 < top_k <= num_experts:
        raise ModelLoadError(f"{path}: a mixture of experts needs num_experts (or num_local_experts) and "
                             f"0 < num_experts_per_tok <= num_experts, not {num_experts!r} and {top_k!r}")
    if raw.get("shared_expert_intermediate_size"):
        raise ModelLoadError(f"{path}: shared experts are unsupported")
    if arch != "qwen3moe":
        return {"num_experts": num_experts, "num_experts_per_tok": top_k,
                "moe_intermediate_size": int(raw["intermediate_size"]), "norm_topk_prob": True}
    step = int(raw.get("decoder_sparse_step") or 1)
    dense_only = set(raw.get("mlp_only_layers") or [])
    return {"num_experts": num_experts, "num_experts_per_tok": top_k,
            "moe_intermediate_size": int(raw.get("moe_intermediate_size") or raw["intermediate_size"]),
            "norm_topk_prob": bool(raw.get("norm_topk_prob", False)),
            "dense_layers": tuple(i for i in range(num_layers) if i in dense_only or (i + 1) % step)}


def _granite_scales(raw: dict) -> dict[str, float]:
    """Granite's four multipliers, at GraniteConfig's defaults where config.json leaves them out."""
    return {"embedding_multiplier": float(raw.get("embedding_multiplier", 1.0)),
            "residual_multiplier": float(raw.get("residual_multiplier", 1.0)),
            "attention_multiplier": float(raw.get("attention_multiplier", 1.0)),
            "logits_scaling": float(raw.get("logits_scaling", 1.0))}


def _windows(raw: dict, arch: str, num_layers: int) -> dict[str, object]:
    """ModelConfig's local attention, as transformers reads config.json: every layer attends within
    sliding_window (Mistral v0.1, Phi-3-mini), or, in Qwen2 with use_sliding_window, the layers from
    max_window_layers on; layer_types, where given, names each layer's kind."""
    window = raw.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or (arch == "qwen2" and not raw.get("use_sliding_window")):
        return {}
    kinds = raw.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == num_layers:
        local = tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention")
    elif arch == "qwen2":
        local = tuple(range(int(raw.get("max_window_layers", 28)), num_layers))
    else:
        local = tuple(range(num_layers))
    return {"sliding_window": window, "sliding_layers": local} if local else {}


def _rope(raw: dict, path: str) -> tuple[float, dict | None]:
    """(rope_theta, HF rope_scaling or None) from either `rope_parameters` (transformers >= 5) or
    `rope_theta` + `rope_scaling` (older configs, where the type key may be spelled "type")."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = params.pop("rope_theta", raw.get("rope_theta", 10000.0))
    if "type" in params:
        params.setdefault("rope_type", params.pop("type"))
    kind = params.get("rope_type", "default")
    if kind not in _ROPE_TYPES:
        raise ModelLoadError(f"{path}: rope scaling {kind!r} is unsupported (supported: {', '.join(_ROPE_TYPES)})")
    if kind == "default":
        return float(theta), None
    if "factor" not in params:
        raise ModelLoadError(f"{path}: rope scaling {params!r} has no factor")
    return float(theta), params


def generation_eos(folder: Path) -> tuple[int, ...]:
    file = folder / "generation_config.json"
    if not file.is_file():
        return ()
    eos = read_json(file).get("eos_token_id")
    if eos is None:
        return ()
    return (eos,) if isinstance(eos, int) else tuple(eos)


def read_json(file: Path) -> dict:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"{file}: not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{file}: unreadable JSON ({e})") from e
    if not isinstance(value, dict):
        raise ModelLoadError(f"{file}: expected a JSON object")
    return value


def _shard_files(folder: Path) -> list[Path]:
    index = folder / _INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: no weight_map")
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors weights (other formats are unsupported)")
    return files


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in _shard_files(folder):
        if not file.is_file():
            raise ModelLoadError(f"{file}: weight shard not found")
        try:
            shard = load_file(file)
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"{file}: unreadable safetensors file ({e})") from e
        duplicated = shard.keys() & weights.keys()
        if duplicated:
            raise ModelLoadError(f"{file}: tensors also in another shard: {sorted(duplicated)[:5]}")
        weights |= shard
    return weights
