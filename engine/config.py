"""Static configuration: the model's hyper-parameters and the engine's limits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True, frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer, whatever file it came from."""

    architecture: str  # registry key, e.g. "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    # Hugging Face's `rope_scaling` dict (e.g. {"rope_type": "llama3", "factor": 8.0, ...}) or None.
    rope_scaling: dict | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class EngineConfig:
    """Limits of one engine instance."""

    block_size: int = 16
    kv_cache_bytes: int = 256 * 1024 * 1024
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # defaults to the model's context window
    enable_prefix_caching: bool = True
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    num_threads: int | None = None
    extra: dict = field(default_factory=dict)
