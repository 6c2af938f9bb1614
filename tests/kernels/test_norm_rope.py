"""fused_add_rms_norm and rotary_ against the torch formulas of engine/models/layers.py."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import norm_rope, reference

apply_rotary = reference.rotary

pytestmark = pytest.mark.skipif(not norm_rope.supported(), reason="engine._C not built with the norm/rope kernels")

DTYPES = [torch.float32, torch.bfloat16]
HIDDENS = [576, 100, 4096]
TOKENS = [1, 3, 17, 64]
EPS = 1e-5


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The bf16 spacing at each |x| (8 significant bits), in fp32."""
    x = x.float().abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    return torch.exp2(torch.floor(torch.log2(x)) - 7)


def assert_bf16_close_to_torch(got: torch.Tensor, want: torch.Tensor, min_identical: float) -> None:
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    same = (got.view(torch.int16) == want.view(torch.int16)).float().mean().item()
    assert same >= min_identical, f"only {same:.4f} of elements identical"
    # The rest differ where h * rsqrt(...) lands on (or next to) a bf16 rounding
    # tie and the fp32 sums of squares, added in another order, differ in the
    # last bit: the normed value rounds one ulp the other way, which the weight
    # product turns into up to two ulps of the output.
    diff = (got.float() - want.float()).abs()
    assert (diff <= 2 * bf16_ulp(torch.maximum(got.float().abs(), want.float().abs()))).all(), \
        f"max diff {diff.max().item()} beyond 2 ulps"


class TorchNorm:
    """The torch formula (engine/kernels/reference.py) with a fixed weight: the reference."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return reference.add_rms_norm(x, residual, self.weight, EPS)


def make_norm(hidden: int, dtype: torch.dtype) -> TorchNorm:
    return TorchNorm((1 + 0.5 * torch.randn(hidden)).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_add_rms_norm(dtype: torch.dtype, hidden: int, tokens: int, with_residual: bool) -> None:
    torch.manual_seed(hidden * 100 + tokens)
    norm = make_norm(hidden, dtype)
    x = (3 * torch.randn(tokens, hidden)).to(dtype)
    residual = (5 * torch.randn(tokens, hidden)).to(dtype) if with_residual else None
    x_before = x.clone()
    res_before = residual.clone() if residual is not None else None

    want_out, want_res = norm(x, residual)
    got_out, got_res = norm_rope.fused_add_rms_norm(x, residual, norm.weight, EPS)

    assert got_out.dtype == dtype and got_out.shape == x.shape and got_res.shape == x.shape
    assert torch.equal(x, x_before), "x was modified"
    if residual is not None:
        assert torch.equal(residual, res_before), "residual was modified"
        assert got_res.data_ptr() not in (x.data_ptr(), residual.data_ptr())
    # x + residual is one rounded add in both.
    assert torch.equal(got_res, want_res)
    if dtype == torch.float32:
        torch.testing.assert_close(got_out, want_out, rtol=1e-6, atol=1e-6)
    else:
        assert_bf16_close_to_torch(got_out, want_out, 0.99)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_strided_and_batched(dtype: torch.dtype) -> None:
    """Rows of a wider buffer (row stride > hidden), and a 3-D input."""
    torch.manual_seed(0)
    hidden = 576
    norm = make_norm(hidden, dtype)
    x = torch.randn(17, 2 * hidden).to(dtype)[:, 3:3 + hidden]
    residual = torch.randn(17, hidden + 8).to(dtype)[:, :hidden]
    want_out, want_res = norm(x, residual)
    got_out, got_res = norm_rope.fused_add_rms_norm(x, residual, norm.weight, EPS)
    assert torch.equal(got_res, want_res)
    torch.testing.assert_close(got_out, want_out, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)

    x3 = torch.randn(2, 5, hidden).to(dtype)
    want_out, want_res = norm(x3)
    got_out, got_res = norm_rope.fused_add_rms_norm(x3, None, norm.weight, EPS)
    assert got_out.shape == x3.shape and got_res is x3
    torch.testing.assert_close(got_out, want_out, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)


def test_fused_add_rms_norm_parallel_path() -> None:
    """Large enough for the multi-threaded path: same results as the serial one."""
    torch.manual_seed(1)
    norm = make_norm(4096, torch.bfloat16)
    x = torch.randn(300, 4096).to(torch.bfloat16)
    residual = torch.randn(300, 4096).to(torch.bfloat16)
    want_out, want_res = norm(x, residual)
    got_out, got_res = norm_rope.fused_add_rms_norm(x, residual, norm.weight, EPS)
    assert torch.equal(got_res, want_res)
    assert_bf16_close_to_torch(got_out, want_out, 0.99)


def test_fused_add_rms_norm_rejects_bad_inputs() -> None:
    x = torch.randn(3, 64)
    with pytest.raises(ValueError, match="weight"):
        norm_rope.fused_add_rms_norm(x, None, torch.ones(63), EPS)
    with pytest.raises(ValueError, match="weight"):
        norm_rope.fused_add_rms_norm(x, None, torch.ones(64, dtype=torch.bfloat16), EPS)
    with pytest.raises(ValueError, match="residual"):
        norm_rope.fused_add_rms_norm(x, torch.randn(3, 65), torch.ones(64), EPS)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        norm_rope.fused_add_rms_norm(x.double(), None, torch.ones(64).double(), EPS)


def rope_tables(tokens: int, head_dim: int, dtype: torch.dtype, three_d: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) as RotaryEmbedding.lookup makes them, at scattered positions."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    positions = torch.randint(0, 8192, (tokens,)).float()
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    return (cos.unsqueeze(1), sin.unsqueeze(1)) if three_d else (cos, sin)


def fused_qkv(tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(tokens, q_size + 2 * kv_size).to(dtype)
    q = qkv[:, :q_size].view(tokens, num_heads, head_dim)
    k = qkv[:, q_size:q_size + kv_size].view(tokens, num_kv_heads, head_dim)
    return qkv, q, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS + [200])
@pytest.mark.parametrize("heads", [(9, 3, 64), (32, 8, 128), (4, 1, 18)])
@pytest.mark.parametrize("torch_rounding", [True, False])
def test_rotary(dtype: torch.dtype, tokens: int, heads: tuple[int, int, int], torch_rounding: bool) -> None:
    num_heads, num_kv_heads, head_dim = heads
    torch.manual_seed(tokens * 7 + head_dim)
    qkv, q, k = fused_qkv(tokens, num_heads, num_kv_heads, head_dim, dtype)
    cos, sin = rope_tables(tokens, head_dim, dtype)
    v_before = qkv[:, (num_heads + num_kv_heads) * head_dim:].clone()
    want_q, want_k = apply_rotary(q.clone(), k.clone(), cos, sin)
    # The exact rotation of the same inputs, to bound the error of a single rounding.
    exact_q, exact_k = apply_rotary(q.double(), k.double(), cos.double(), sin.double())

    norm_rope.rotary_(q, k, cos, sin, torch_rounding=torch_rounding)

    assert torch.equal(qkv[:, (num_heads + num_kv_heads) * head_dim:], v_before), "v was touched"
    for got, want, exact in ((q, want_q, exact_q), (k, want_k, exact_k)):
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        elif torch_rounding:
            assert torch.equal(got, want)
        else:
            # Rounded once: within half a bf16 ulp of the exact result.
            err = (got.double() - exact).abs()
            assert (err <= bf16_ulp(exact.float()).double() / 2 + 1e-30).all()
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_contiguous_and_2d_tables(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    q = torch.randn(5, 9, 64).to(dtype)
    k = torch.randn(5, 3, 64).to(dtype)
    cos, sin = rope_tables(5, 64, dtype, three_d=False)
    want_q, want_k = apply_rotary(q, k, cos.unsqueeze(1), sin.unsqueeze(1))
    norm_rope.rotary_(q, k, cos, sin)
    torch.testing.assert_close(q, want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k, want_k, rtol=1e-6, atol=1e-6)


def test_rotary_rejects_bad_inputs() -> None:
    q, k = torch.randn(3, 9, 64), torch.randn(3, 3, 64)
    cos, sin = rope_tables(3, 64, torch.float32)
    with pytest.raises(ValueError, match="float32 or all bfloat16"):
        norm_rope.rotary_(q, k, cos.to(torch.bfloat16), sin)
    with pytest.raises(ValueError, match="T and an even head_dim"):
        norm_rope.rotary_(q, torch.randn(2, 3, 64), cos, sin)
    with pytest.raises(ValueError, match="cos and sin"):
        norm_rope.rotary_(q, k, cos[:2], sin[:2])
    with pytest.raises(ValueError, match="unit last stride"):
        norm_rope.rotary_(torch.randn(3, 9, 128)[:, :, ::2], k, cos, sin)
