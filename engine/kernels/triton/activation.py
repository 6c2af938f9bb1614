"""SiLU-and-mul: out = silu(x[:, :I]) * x[:, I:] for the fused gate/up projection's output.

Layout: x (T, 2 * I), unit last stride; out (T, I) contiguous, x's dtype.

Design: a 2-D grid of (token, BLOCK columns) programs, each reading its gate and up slices once
and writing once (3 * T * I elements of traffic, against 5 passes for torch's silu then mul).
Math in fp32 with one rounding at the end; the torch reference rounds silu(gate) first, so bf16
agrees within one rounding.
Reference: torch.nn.functional.silu(gate) * up (silu_and_mul_reference below).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, INTER: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    gate = tl.load(x_ptr + token * x_stride + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + token * x_stride + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + token * INTER + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    num_tokens, two_inter = x.shape
    assert two_inter % 2 == 0 and x.stride(-1) == 1
    inter = two_inter // 2
    out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)
    if num_tokens:
        _silu_and_mul_kernel[(num_tokens, triton.cdiv(inter, block))](x, out, x.stride(0), INTER=inter, BLOCK=block,
                                                                       num_warps=4)
    return out


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
