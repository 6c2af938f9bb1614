"""Kernel ops for the models (attention, linear): the one place that picks a kernel backend.

Backends:
  "cpp"    the C++/OpenMP kernels of the extension `engine._C` (csrc/cpu/), for
           float32 and bfloat16 CPU tensors;
  "torch"  the pure-torch reference (engine/kernels/reference.py), everywhere else.
The environment variable LLMAAS_ATTENTION_BACKEND=torch|cpp forces one; it is read
at each call so tests and benchmarks can switch it.

The C++ kernels take raw pointers, so this module checks shapes, dtypes and
layouts, converts the integer metadata to the documented dtypes, and keeps every
tensor alive for the duration of the call. The kernels themselves check the
data-dependent invariants (lengths, block ids, slots) and raise ValueError.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

from engine.kernels import linear as linear_kernel
from engine.kernels import gpu_ops, norm_rope, reference, torch_paged

try:
    from engine import _C
except ImportError as error:  # not built: the torch backend takes over
    _C = None
    _C_IMPORT_ERROR: ImportError | None = error
else:
    _C_IMPORT_ERROR = None

Backend = Literal["torch", "cpp", "triton", "cuda"]
BACKEND_ENV = "LLMAAS_ATTENTION_BACKEND"
LINEAR_BACKEND_ENV = "LLMAAS_LINEAR_BACKEND"
_CPP_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def cpp_available() -> bool:
    return _C is not None


CPU_ATTENTION_ENV = "LLMAAS_CPU_ATTENTION"


def select_cpu_attention() -> None:
    """LLMAAS_CPU_ATTENTION names the C++ attention kernel's variant for the process (one of
    engine._C.supported_cpu_isas(): amx_bf16 prefills faster on AMX CPUs and decodes long contexts
    slower, bench/RESULTS.md); unset, the kernel keeps the best the CPU runs. One variant serves
    every row, so a sequence's tokens still do not depend on its batch."""
    name = os.environ.get(CPU_ATTENTION_ENV)
    if not name:
        return
    if _C is None:
        raise RuntimeError(f"{CPU_ATTENTION_ENV}={name!r} but the extension engine._C does not import "
                           f"({_C_IMPORT_ERROR})")
    if name not in _C.supported_cpu_isas():
        raise ValueError(f"{CPU_ATTENTION_ENV}={name!r}: this CPU runs {', '.join(_C.supported_cpu_isas())}")
    _C.set_cpu_isa(name)


def _backend_for(tensor: torch.Tensor) -> Backend:
    """The backend for an op whose data lives in `tensor` (device, dtype)."""
    forced = os.environ.get(BACKEND_ENV)
    if tensor.device.type == "cuda":  # Triton by default, CUDA C++ on request: engine/kernels/gpu_ops.py
        if forced not in (None, "", "torch", "triton", "cuda"):
            raise ValueError(f"{BACKEND_ENV}={forced!r}: expected torch, triton or cuda on CUDA tensors")
        return gpu_ops.backend(forced)
    if forced == "torch":
        return "torch"
    if forced == "cpp":
        if _C is None:
            raise RuntimeError(
                f"{BACKEND_ENV}=cpp but the extension engine._C does not import ({_C_IMPORT_ERROR}); "
                "build it with `python setup.py build_ext --inplace`"
            )
        return "cpp"
    if forced:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: expected torch or cpp")
    if tensor.device.type == "cpu" and tensor.dtype in _CPP_DTYPES and _C is not None:
        return "cpp"
    # GPU backends (Triton, CUDA) are chosen here, by tensor.device.type.
    return "torch"


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Stores the new tokens' keys and values in the paged cache.

    key, value: (num_tokens, num_kv_heads, head_dim); k_cache, v_cache:
    (num_blocks, block_size, num_kv_heads, head_dim); slot_mapping: (num_tokens,)
    int64, slot = block_id * block_size + offset_in_block. Every slot is valid
    (no -1 sentinels).
    """
    backend = _backend_for(k_cache)
    if backend == "cpp":
        _cpp_write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    elif k_cache.device.type == "cuda":
        gpu_ops.write_kv_cache(backend, key, value, k_cache, v_cache, slot_mapping)
    else:
        reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_context_len: int,
    *,
    sliding_window: int | None = 0,
) -> torch.Tensor:
    """Causal attention of a mixed batch (prefill chunks and decodes) over the paged cache.

    query: (num_tokens, num_heads, head_dim), the query tokens of all sequences
    concatenated; query_start_loc: (num_seqs + 1,) int32, cumulative query lengths;
    context_lens: (num_seqs,) int32, tokens of each sequence in the cache,
    including its query tokens (already written by write_kv_cache); block_tables:
    (num_seqs, max_blocks_per_seq) int32, physical block ids (entries beyond a
    sequence's blocks are arbitrary). Query row j of sequence s (q_len rows) sits
    at position context_lens[s] - q_len + j and attends to positions 0..that.
    GQA: query head h uses kv head h // (num_heads // num_kv_heads).
    Returns (num_tokens, num_heads, head_dim) in query's dtype.

    sliding_window W > 0 makes the attention local, as Mistral's and Hugging Face's: the
    query at position p sees only keys p - W + 1 .. p (the last W, itself included). 0 or
    None: every key up to p. A model passes its layer's constant, a Python int, at each call.

    max_query_len and max_context_len are host-side bounds for kernels that must
    size their launch without reading the device tensors; the CPU backends read
    the lengths directly and ignore them.
    """
    window = sliding_window or 0
    if window < 0:
        raise ValueError(f"sliding_window must be >= 0 (0: none), got {sliding_window}")
    backend = _backend_for(query)
    if query.device.type == "cuda":
        return gpu_ops.paged_attention(backend, query, k_cache, v_cache, block_tables, context_lens,
                                       query_start_loc, scale, max_query_len, max_context_len, window)
    if backend == "cpp":
        out = torch.empty(query.shape, dtype=query.dtype)
        _cpp_paged_attention(query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, out,
                             window)
        return out
    # Off the CPU, until a GPU kernel is picked here: batched torch ops, no host sync.
    attention = reference.paged_attention if query.device.type == "cpu" else torch_paged.paged_attention
    return attention(
        query, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, max_query_len, max_context_len,
        window,
    )


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype:
        raise ValueError("k_cache and v_cache must both be (num_blocks, block_size, num_kv_heads, head_dim), one dtype")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the cpp backend needs contiguous caches (a copy would cost a pass and lose writes)")


def _require_cpu(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if tensor.device.type != "cpu":
            raise ValueError(f"the cpp backend runs on CPU tensors, not {tensor.device}")


def _unit_last_stride(tensor: torch.Tensor) -> torch.Tensor:
    """Views with unit last stride pass as they are (row strides go to the kernel)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _cpp_write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    assert _C is not None
    _require_cpu(key, value, k_cache, v_cache, slot_mapping)
    _check_cache(k_cache, v_cache)
    num_tokens = key.shape[0]
    if key.shape != (num_tokens, *k_cache.shape[2:]) or value.shape != key.shape:
        raise ValueError(f"key/value must be (num_tokens, {k_cache.shape[2]}, {k_cache.shape[3]}), got {key.shape}")
    if key.dtype != k_cache.dtype or value.dtype != k_cache.dtype:
        raise ValueError(f"key/value dtype {key.dtype}/{value.dtype} differs from the cache's {k_cache.dtype}")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping must be ({num_tokens},), got {tuple(slot_mapping.shape)}")
    key, value = _unit_last_stride(key), _unit_last_stride(value)
    slots = slot_mapping.to(torch.int64).contiguous()
    _C.write_kv_cache(
        key=key.data_ptr(),
        value=value.data_ptr(),
        k_cache=k_cache.data_ptr(),
        v_cache=v_cache.data_ptr(),
        slot_mapping=slots.data_ptr(),
        elem_size=k_cache.element_size(),
        num_tokens=num_tokens,
        num_kv_heads=k_cache.shape[2],
        head_dim=k_cache.shape[3],
        num_slots=k_cache.shape[0] * k_cache.shape[1],
        key_token_stride=key.stride(0),
        key_head_stride=key.stride(1),
        value_token_stride=value.stride(0),
        value_head_stride=value.stride(1),
        num_threads=torch.get_num_threads(),
    )


def _cpp_paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    sliding_window: int = 0,
) -> None:
    """paged_attention into a preallocated contiguous `out` (the tests poison it)."""
    assert _C is not None
    _require_cpu(query, k_cache, v_cache, block_tables, context_lens, query_start_loc, out)
    _check_cache(k_cache, v_cache)
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if query.dim() != 3 or query.shape[2] != head_dim or query.shape[1] % num_kv_heads != 0:
        raise ValueError(f"query must be (num_tokens, k * {num_kv_heads}, {head_dim}), got {tuple(query.shape)}")
    if query.dtype != k_cache.dtype or query.dtype not in _CPP_DTYPES:
        raise ValueError(f"the cpp backend needs query and caches of one dtype among float32, bfloat16; "
                         f"got {query.dtype} and {k_cache.dtype}")
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of query's shape and dtype")
    num_seqs = context_lens.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or query_start_loc.shape != (num_seqs + 1,):
        raise ValueError("block_tables must be (num_seqs, max_blocks_per_seq) and query_start_loc (num_seqs + 1,)")
    query = _unit_last_stride(query)
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    starts = query_start_loc.to(torch.int32).contiguous()
    _C.paged_attention(
        out=out.data_ptr(),
        query=query.data_ptr(),
        k_cache=k_cache.data_ptr(),
        v_cache=v_cache.data_ptr(),
        block_tables=tables.data_ptr(),
        context_lens=lens.data_ptr(),
        query_start_loc=starts.data_ptr(),
        dtype=getattr(_C.DType, _CPP_DTYPES[query.dtype]),
        num_tokens=query.shape[0],
        num_seqs=num_seqs,
        num_heads=query.shape[1],
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        num_blocks=num_blocks,
        max_blocks_per_seq=tables.shape[1],
        q_token_stride=query.stride(0),
        q_head_stride=query.stride(1),
        scale=scale,
        num_threads=torch.get_num_threads(),
        sliding_window=sliding_window,
    )


def q4_1_linear_runs(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether linears of this dtype on this device read Q4_1 forms at decode (linear_kernel.pack)."""
    return (torch.device(device).type == "cpu" and dtype == torch.bfloat16
            and os.environ.get(LINEAR_BACKEND_ENV) != "torch" and linear_kernel.q4_1_supported())


def pack_linear_weight(weight: torch.Tensor,
                       q4_1_blocks: torch.Tensor | None = None) -> linear_kernel.PackedLinearWeight | None:
    """The weight (out_features, in_features) in the C++ kernel's layout where that kernel runs
    it (bf16 on CPU); None where torch's linear does. LLMAAS_LINEAR_BACKEND=torch forces torch.
    q4_1_blocks: the weight's GGUF Q4_1 blocks, packed too where the Q4_1 kernel runs."""
    forced = os.environ.get(LINEAR_BACKEND_ENV)
    if forced not in (None, "", "torch", "cpp"):
        raise ValueError(f"{LINEAR_BACKEND_ENV}={forced!r}: expected torch or cpp")
    if forced == "torch" or weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return None
    if not linear_kernel.supported():
        if forced == "cpp":
            raise RuntimeError(f"{LINEAR_BACKEND_ENV}=cpp but engine._C lacks the linear kernel")
        return None
    return linear_kernel.pack(weight, q4_1_blocks if linear_kernel.q4_1_supported() else None)


def linear(x: torch.Tensor, weight: torch.Tensor | None, packed: linear_kernel.PackedLinearWeight | None,
           out_dtype: torch.dtype | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias), through the packed kernel when the weight was packed for it."""
    if packed is not None:
        return linear_kernel.linear(x, packed, out_dtype, bias)
    assert weight is not None
    y = torch.nn.functional.linear(x, weight, bias)
    return y if out_dtype is None else y.to(out_dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual), rounded as the torch formula rounds."""
    if x.device.type == "cpu" and x.dtype in _CPP_DTYPES and norm_rope.supported():
        return norm_rope.fused_add_rms_norm(x, residual, weight, eps)
    if x.device.type == "cuda" and (fused := gpu_ops.add_rms_norm(x, residual, weight, eps)) is not None:
        return fused
    return reference.add_rms_norm(x, residual, weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding of q (T, heads, D) and k (T, kv_heads, D); cos, sin (T, 1, D).
    The C++ op rotates q and k in place (they are views of this step's qkv buffer)."""
    if q.device.type == "cpu" and q.dtype in _CPP_DTYPES and norm_rope.supported():
        norm_rope.rotary_(q, k, cos, sin)
        return q, k
    if q.device.type == "cuda" and (rotated := gpu_ops.rotary(q, k, cos, sin)) is not None:
        return rotated
    return reference.rotary(q, k, cos, sin)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x[:, :I]) * x[:, I:]: Gemma's gate (T, 2I) -> (T, I)."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:] for the fused gate/up projection (T, 2I): one Triton pass on CUDA."""
    if x.device.type == "cuda" and (fused := gpu_ops.silu_and_mul(x)) is not None:
        return fused
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
