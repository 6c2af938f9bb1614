"""Static configuration: the model's hyper-parameters and the engine's limits."""
from __future__ import annotations

from dataclasses import dataclass

import torch

TASKS = ("generate", "embed")
POOLINGS = ("last", "mean", "cls")


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
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    qk_norm: bool = False  # an RMSNorm over each head of q and of k, before rotary (Qwen3)
    # Granite's scales: the embeddings times embedding_multiplier; each sublayer's output times
    # residual_multiplier before it joins the residual; attention scores times attention_multiplier
    # (None: head_dim ** -0.5); the logits divided by logits_scaling.
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # Mixture of experts (Mixtral, Qwen3-MoE, Granite MoE): each MoE layer's MLP is num_experts SwiGLU
    # experts of moe_intermediate_size, num_experts_per_tok of them chosen per token by a softmax router,
    # their weights rescaled to sum to 1 when norm_topk_prob. 0 experts: every layer is dense.
    # dense_layers: layers that keep a dense MLP of intermediate_size (Qwen3-MoE's mlp_only_layers).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    dense_layers: tuple[int, ...] = ()

    # Local attention (Gemma 3): the layers in sliding_layers attend to the last sliding_window positions
    # only, with rotary at rope_local_theta (None: rope_theta) and no rope scaling.
    sliding_window: int = 0
    sliding_layers: tuple[int, ...] = ()
    rope_local_theta: float | None = None
    hidden_act: str = "silu"  # the MLP's gate activation: "silu" or "gelu_tanh" (Gemma)
    # An encoder (XLM-RoBERTa): attention both ways within a prompt computed whole, no KV cache; an
    # embedding model only. Its position embeddings start at row position_offset (RoBERTa's pad id + 1).
    causal: bool = True
    position_offset: int = 0

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    def window_of(self, layer: int) -> int:
        """The layer's attention window, 0 for none."""
        return self.sliding_window if layer in self.sliding_layers else 0


@dataclass(slots=True)
class EngineConfig:
    """Limits of one engine instance."""

    # Tokens per KV block. None: 8 on CPU (at most 7 idle slots per sequence, under 4% of a typical
    # chat sequence's cache), 16 on GPUs, whose kernels want wider tiles.
    block_size: int | None = None
    kv_cache_bytes: int = 256 * 1024 * 1024
    max_num_seqs: int = 64
    # Tokens one step computes (decodes plus prefill chunks). None: 256 on CPU, where a step of 512
    # takes ~250 ms and stalls every running stream that long (ITL p99 ~310 ms at 32 streams, ~160
    # with 256, same throughput: bench/RESULTS.md); 512 on GPUs.
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None  # defaults to the model's context window
    enable_prefix_caching: bool = True
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    num_threads: int | None = None
    gpu_memory_utilization: float | None = None  # CUDA: KV cache sized to this share of GPU memory; None: kv_cache_bytes
    load_format: str = "auto"  # "dummy": random weights of the model's shapes, made on the device (benchmarks)
    # bf16 on an avx512_bf16 or AMX CPU: linears a GGUF stores in Q4_1 keep that form too (0.625 more bytes
    # a weight in memory), read by steps of up to 4 tokens: 3.2x fewer bytes a decode step, the same
    # outputs bit for bit (engine/kernels/linear.py).
    quantized_decode: bool = True
    # "generate" answers completions; "embed" only embeddings (engine/pooling.py): prompts are
    # computed, their final hidden states pooled into one unit vector each, and nothing is sampled.
    task: str = "generate"
    # embed: "last" (the last prompt position's state), "mean" (over every position) or "cls" (the first
    # position's); None: what the model folder's sentence-transformers config says, else "last" ("cls" for
    # an encoder).
    pooling: str | None = None
    # embed: answer any `dimensions` up to the model's size (the first values, normalised again), for a
    # Matryoshka-trained model whose config.json does not say so (Qwen3-Embedding's does not).
    matryoshka: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: expected one of {', '.join(TASKS)}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.pooling is not None and self.task != "embed":
            raise ValueError("pooling applies to the embed task only (--task embed)")
        if self.matryoshka and self.task != "embed":
            raise ValueError("matryoshka applies to the embed task only (--task embed)")
        on_cpu = torch.device(self.device).type == "cpu"
        if self.block_size is None:
            self.block_size = 8 if on_cpu else 16
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = 256 if on_cpu else 512
