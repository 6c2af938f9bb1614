"""The GPU branches of engine/kernels/ops.py: which kernel serves a CUDA tensor, and the calls.

Backends for CUDA tensors: "triton" (engine/kernels/triton/, the default wherever triton imports),
"cuda" (csrc/cuda/ through engine/kernels/cuda_kernels.py: decode attention and the KV-cache write;
the other ops fall back to Triton) and "torch" (reference / torch_paged, no custom kernel).
LLMAAS_ATTENTION_BACKEND=triton|cuda|torch picks one (ops reads it at every call). Triton modules
are imported on first use, so CPU-only processes never import triton.
"""
from __future__ import annotations

from functools import cache
from typing import Literal

import torch

from engine.kernels import cuda_kernels, reference, torch_paged
from engine.kernels import triton as triton_kernels

GpuBackend = Literal["triton", "cuda", "torch"]


@cache
def triton_available() -> bool:
    return triton_kernels.available()


def backend(forced: str | None) -> GpuBackend:
    """The backend for a CUDA tensor, given LLMAAS_ATTENTION_BACKEND's value (None or "": default)."""
    if forced == "torch":
        return "torch"
    if forced == "cuda":
        if not cuda_kernels.available():
            raise RuntimeError("LLMAAS_ATTENTION_BACKEND=cuda but engine._C_cuda is not built: "
                               "LLMAAS_BUILD_CUDA=1 python setup.py build_ext --inplace")
        return "cuda"
    if forced == "triton" and not triton_available():
        raise RuntimeError("LLMAAS_ATTENTION_BACKEND=triton but triton is not installed")
    return "triton" if triton_available() else "torch"


def write_kv_cache(which: GpuBackend, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    if which == "cuda":
        cuda_kernels.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    elif which == "triton":
        from engine.kernels.triton import cache_write

        cache_write.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    else:
        reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(which: GpuBackend, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor, query_start_loc: torch.Tensor,
                    scale: float, max_query_len: int, max_context_len: int, sliding_window: int = 0) -> torch.Tensor:
    """Decode batches (one query token per sequence) take the decode kernel, all else prefill/extend.
    sliding_window (0: none) is a plain int, a kernel argument: a captured graph keeps it."""
    decode = max_query_len == 1 and query.shape[0] == context_lens.shape[0]
    if which == "cuda" and decode and query.shape[-1] in cuda_kernels.HEAD_DIMS:
        return cuda_kernels.decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale,
                                             max_context_len, sliding_window=sliding_window)
    if which in ("cuda", "triton") and triton_available():
        tables, lens = block_tables.to(torch.int32), context_lens.to(torch.int32)
        if decode:
            from engine.kernels.triton.attention_decode import decode_attention

            return decode_attention(query, k_cache, v_cache, tables, lens, scale, max_context_len,
                                    sliding_window=sliding_window)
        from engine.kernels.triton.attention_prefill import prefill_attention

        return prefill_attention(query, k_cache, v_cache, tables, lens, query_start_loc.to(torch.int32), scale,
                                 max_query_len, sliding_window=sliding_window)
    return torch_paged.paged_attention(query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale,
                                       max_query_len, max_context_len, sliding_window)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The Triton fused kernel's result, or None where it does not apply (then ops uses torch)."""
    if not triton_available() or x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        return None
    from engine.kernels.triton import norm

    return norm.add_rms_norm(x, residual, weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rotates q and k in place with the Triton kernel (they are views of this step's qkv buffer)."""
    if not triton_available() or q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1:
        return None
    from engine.kernels.triton import rotary as rotary_kernel

    return rotary_kernel.rotary_(q, k, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor | None:
    if not triton_available() or x.dim() != 2 or x.stride(-1) != 1:
        return None
    from engine.kernels.triton import activation

    return activation.silu_and_mul(x)
