"""RMSNorm with residual add, and rotary embedding, on CPU through csrc/cpu/norm_rope.cpp.

In a decode step these layers compute little (576 elements for SmolLM2-135M)
but cost a dozen small torch ops each; one C++ call replaces them:

    normed, residual = fused_add_rms_norm(x, residual, weight, eps)   # residual may be None
    rotary_(q, k, cos, sin)                                           # in place

Semantics are those of engine/models/layers.py's `RMSNorm.forward` and
`apply_rotary`, for float32 and bfloat16 CPU tensors, computed in fp32:

- fused_add_rms_norm rounds where the torch formula does: x + residual to the
  dtype, h * rsqrt(mean(h^2) + eps) to the dtype, weight * that to the dtype
  (each bf16 op computes in fp32 and rounds to nearest even once). Only the
  order of the sum of squares differs, so bf16 outputs equal torch's but for
  rare 1-ulp differences.
- rotary_ computes x * cos + rotate_half(x) * sin in fp32. For bf16 it rounds
  each product to bf16 and then the sum, as the torch formula (and Hugging
  Face's apply_rotary_pos_emb) does, so it equals torch bit for bit; with
  torch_rounding=False it rounds only the sum (within half an ulp of exact,
  but ~40% of elements then differ from torch by an ulp). fp32 results equal
  torch's within an ulp (the kernel may fuse a product and the sum).

The kernels take raw pointers, so this module checks dtypes, devices, shapes and
strides (cheaply: decode makes ~90 such calls per token) and keeps every tensor
alive for the duration of the call. Small calls run on the calling thread; only
large ones (prefill) use torch's thread count.
"""
from __future__ import annotations

import torch

try:
    from engine import _C
except ImportError:  # not built: supported() is False
    _C = None

_SUPPORTED = _C is not None and hasattr(_C, "fused_add_rms_norm") and hasattr(_C, "rotary")
# Looked up once, not per call.
_DTYPES = {torch.float32: _C.DType.float32, torch.bfloat16: _C.DType.bfloat16} if _SUPPORTED else {}
_norm = _C.fused_add_rms_norm if _SUPPORTED else None
_rotary = _C.rotary if _SUPPORTED else None
_empty = torch.empty
_empty_like = torch.empty_like  # half the cost of torch.empty(shape, dtype=...)
_get_num_threads = torch.get_num_threads
# Below this many elements the kernel stays on the calling thread (keep in step
# with kParallelMinElems in csrc/cpu/norm_rope.cpp), so the thread count is not asked.
_PARALLEL_MIN_ELEMS = 1 << 16


def supported() -> bool:
    """Whether the extension is built with these kernels."""
    return _SUPPORTED


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * rms_norm(x + residual), x + residual) as `RMSNorm.forward` computes them.

    x, residual: (..., hidden), weight: (hidden,), all of one dtype (float32 or
    bfloat16) on CPU. Inputs are not modified. Both outputs are new contiguous
    tensors shaped like x, except that without a residual the second one is x
    itself, as in the torch formula.
    """
    if not _SUPPORTED:
        raise RuntimeError("engine._C is not built with the norm/rope kernels")
    dtype = x.dtype
    dtype_enum = _DTYPES.get(dtype)
    if dtype_enum is None or not x.is_cpu:
        raise ValueError(f"fused_add_rms_norm expects a float32 or bfloat16 CPU tensor, got {dtype} on {x.device}")
    shape = x.shape
    if not shape:
        raise ValueError("fused_add_rms_norm expects x of shape (..., hidden), got a 0-d tensor")
    cols = shape[-1]
    if weight.shape != (cols,) or weight.dtype != dtype or not weight.is_cpu:
        raise ValueError(f"weight must be a ({cols},) {dtype} CPU tensor, got {tuple(weight.shape)} {weight.dtype} "
                         f"on {weight.device}")
    if not weight.is_contiguous():
        weight = weight.contiguous()
    x_rows, x_stride, rows = _rows(x, cols)
    out = _empty_like(x) if x.is_contiguous() else _empty(shape, dtype=dtype)
    if residual is None:
        res_rows, res_stride, res_out_ptr = None, 0, 0
        res_out = x
    else:
        if residual.shape != shape or residual.dtype != dtype or not residual.is_cpu:
            raise ValueError(f"residual must match x {tuple(shape)} {dtype} on CPU, got {tuple(residual.shape)} "
                             f"{residual.dtype} on {residual.device}")
        res_rows, res_stride, _ = _rows(residual, cols)
        res_out = _empty_like(out)
        res_out_ptr = res_out.data_ptr()
    if rows and cols:
        _norm(out=out.data_ptr(), residual_out=res_out_ptr, x=x_rows.data_ptr(),
              residual=res_rows.data_ptr() if res_rows is not None else 0, weight=weight.data_ptr(),
              dtype=dtype_enum, rows=rows, cols=cols, x_row_stride=x_stride, residual_row_stride=res_stride,
              eps=eps, num_threads=_get_num_threads() if rows * cols >= _PARALLEL_MIN_ELEMS else 1)
    return out, res_out


def _rows(t: torch.Tensor, cols: int) -> tuple[torch.Tensor, int, int]:
    """t (..., cols) as (tensor, row stride, rows) with unit-stride rows: t itself
    when contiguous (the usual case), else a 2-D view where strides allow, else a
    contiguous copy. The caller keeps the returned tensor while the kernel runs."""
    if t.is_contiguous():
        return t, cols, t.numel() // cols if cols else 0
    rows2d = t if t.dim() == 2 else t.reshape(-1, cols)
    if rows2d.stride(1) != 1:
        rows2d = rows2d.contiguous()
    return rows2d, rows2d.stride(0), rows2d.shape[0]


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
            torch_rounding: bool = True) -> None:
    """Applies `apply_rotary` (rotate-half) to q and k in place.

    q: (T, num_heads, head_dim), k: (T, num_kv_heads, head_dim), any token and
    head strides with a unit last stride (views of the fused qkv output are fine;
    q and k must not overlap). cos, sin: (T, 1, head_dim) or (T, head_dim) with a
    unit last stride, as `RotaryEmbedding.lookup` returns them. All of one dtype
    (float32 or bfloat16), on CPU; head_dim even. torch_rounding: see the module
    docstring (bf16 only).
    """
    if not _SUPPORTED:
        raise RuntimeError("engine._C is not built with the norm/rope kernels")
    dtype = q.dtype
    dtype_enum = _DTYPES.get(dtype)
    if (dtype_enum is None or k.dtype != dtype or cos.dtype != dtype or sin.dtype != dtype or not q.is_cpu
            or not k.is_cpu or not cos.is_cpu or not sin.is_cpu):
        raise ValueError(f"rotary_ expects q, k, cos, sin all float32 or all bfloat16 on CPU, got {q.dtype}, "
                         f"{k.dtype}, {cos.dtype}, {sin.dtype}")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be (T, heads, head_dim), got {tuple(q.shape)} and {tuple(k.shape)}")
    t, num_heads, head_dim = q.shape
    kt, num_kv_heads, k_head_dim = k.shape
    if kt != t or k_head_dim != head_dim or head_dim % 2:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share T and an even head_dim")
    qs, ks, cs, ss = q.stride(), k.stride(), cos.stride(), sin.stride()  # one call each: stride(i) costs as much
    if qs[2] != 1 or ks[2] != 1:
        raise ValueError("q and k must have a unit last stride")
    table_shape = (t, 1, head_dim) if cos.dim() == 3 else (t, head_dim)
    if cos.shape != table_shape or sin.shape != table_shape or cs[-1] != 1 or ss[-1] != 1:
        raise ValueError(f"cos and sin must be ({t}, 1, {head_dim}) or ({t}, {head_dim}) with a unit last stride, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if t == 0:
        return
    elems = t * (num_heads + num_kv_heads) * head_dim
    _rotary(q=q.data_ptr(), k=k.data_ptr(), cos=cos.data_ptr(), sin=sin.data_ptr(), dtype=dtype_enum,
            num_tokens=t, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            q_token_stride=qs[0], q_head_stride=qs[1], k_token_stride=ks[0], k_head_stride=ks[1],
            cos_token_stride=cs[0], sin_token_stride=ss[0],
            torch_rounding=torch_rounding, num_threads=_get_num_threads() if elems >= _PARALLEL_MIN_ELEMS else 1)
