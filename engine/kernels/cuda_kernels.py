"""Python side of the CUDA kernels (module engine._C_cuda, csrc/cuda/): checks shapes, dtypes and
layouts, allocates the split-K scratch, and launches on torch's current stream.

The module exists only where the extension was built with CUDA (setup.py: LLMAAS_BUILD_CUDA=1, or
nvcc and a GPU present); available() says whether it imported.
"""
from __future__ import annotations

import torch

try:
    from engine import _C_cuda
except ImportError:  # a CPU build: the Triton or torch backends serve CUDA tensors
    _C_cuda = None

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
HEAD_DIMS = (64, 128, 256)
SPLIT_TOKENS = 512  # tokens per split: the grid only splits contexts longer than this


def available() -> bool:
    return _C_cuda is not None


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _attended_len(max_context_len: int, sliding_window: int) -> int:
    """The most keys one decode query attends: its context, or the last sliding_window of it."""
    return min(max_context_len, sliding_window) if sliding_window > 0 else max_context_len


def plan_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, num_sms: int = 132,
                sliding_window: int = 0) -> tuple[int, int]:
    """(num_splits, partition): split only while the grid has fewer blocks than ~2 per SM; the
    splits cover the attended keys (a window's, if any, however long the context)."""
    keys = _attended_len(max_context_len, sliding_window)
    wanted = max(1, -(-2 * num_sms // max(1, num_seqs * num_kv_heads)))
    splits = max(1, min(wanted, -(-keys // SPLIT_TOKENS)))
    partition = -(-max(1, keys) // splits)
    return splits, partition


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    assert _C_cuda is not None
    num_tokens, num_kv_heads, head_dim = key.shape
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.shape == v_cache.shape):
        raise ValueError("k_cache and v_cache must be contiguous, one shape")
    if key.dtype != k_cache.dtype or value.dtype != k_cache.dtype or key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("key/value must have the cache's dtype and unit last stride")
    if k_cache.shape[2:] != key.shape[1:] or value.shape != key.shape or slot_mapping.dtype != torch.int64:
        raise ValueError("key/value (num_tokens, num_kv_heads, head_dim) and int64 slot_mapping expected")
    _C_cuda.write_kv_cache(
        key=key.data_ptr(), value=value.data_ptr(), k_cache=k_cache.data_ptr(), v_cache=v_cache.data_ptr(),
        slot_mapping=slot_mapping.data_ptr(), elem_size=k_cache.element_size(), num_tokens=num_tokens,
        num_kv_heads=num_kv_heads, head_dim=head_dim, key_token_stride=key.stride(0), key_head_stride=key.stride(1),
        value_token_stride=value.stride(0), value_head_stride=value.stride(1), stream=_stream(key.device))


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, max_context_len: int,
                     out: torch.Tensor | None = None, num_splits: int | None = None,
                     sliding_window: int = 0) -> torch.Tensor:
    """One query token per sequence: query (num_seqs, num_heads, head_dim); see csrc/cuda/paged_attention.cu.
    sliding_window > 0: each query sees only its last sliding_window keys."""
    assert _C_cuda is not None
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if query.dtype not in _DTYPES or k_cache.dtype != query.dtype or v_cache.dtype != query.dtype:
        raise ValueError(f"query and caches of one dtype among {list(_DTYPES)}")
    if head_dim not in HEAD_DIMS or num_heads % num_kv_heads or query.stride(-1) != 1:
        raise ValueError(f"head_dim in {HEAD_DIMS}, num_heads % num_kv_heads == 0, unit last stride")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("contiguous caches expected")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or not block_tables.is_contiguous():
        raise ValueError("int32 block_tables (contiguous) and context_lens expected")
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_splits is None:
        num_splits, partition = plan_splits(num_seqs, num_kv_heads, max_context_len,
                                            torch.cuda.get_device_properties(query.device).multi_processor_count,
                                            sliding_window)
    else:
        partition = -(-max(1, _attended_len(max_context_len, sliding_window)) // num_splits)
    partials = None
    if num_splits > 1:
        partials = torch.empty(num_seqs, num_heads, num_splits, head_dim + 2, dtype=torch.float32,
                               device=query.device)
    _C_cuda.decode_attention(
        out=out.data_ptr(), partials=0 if partials is None else partials.data_ptr(), query=query.data_ptr(),
        k_cache=k_cache.data_ptr(), v_cache=v_cache.data_ptr(), block_tables=block_tables.data_ptr(),
        context_lens=context_lens.data_ptr(), dtype=getattr(_C_cuda.DType, _DTYPES[query.dtype]),
        num_seqs=num_seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
        max_blocks_per_seq=block_tables.shape[1], q_token_stride=query.stride(0), q_head_stride=query.stride(1),
        num_splits=num_splits, partition=partition, sliding_window=sliding_window, scale=scale,
        stream=_stream(query.device))
    return out
