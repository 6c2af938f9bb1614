"""linear_bf16: the C++ kernel against the fp32-accumulated reference, on every ISA variant."""
from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from engine.kernels import linear

pytestmark = pytest.mark.skipif(not linear.supported(), reason="engine._C not built with the linear kernel")

# Shapes off the 32-column tile, the 12-row (vdpbf16ps) and 16- and 32-row (AMX) blocks, K off the
# AMX tile's 32 elements, odd K, and SmolLM2's own.
MS = [1, 3, 17, 64, 257]
NS = [1, 15, 192, 577, 1536]
KS = [2, 64, 130, 576, 1536]
OUT_DTYPES = [torch.bfloat16, torch.float32]
# Relative to the output: a bf16 output is rounded once (2^-9), and the fp32
# sums differ from the reference's only in order.
RTOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}
# Relative to sum |x_k * w_k|, which bounds fp32 accumulation error (K * 2^-24
# of it, below 1e-4 for K <= 1536) where the sum itself cancels out.
ABS_TOL = 1e-4


def isas() -> list[str]:
    return linear._C.supported_linear_isas() if linear.supported() else []


@pytest.fixture(params=isas())
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    default = linear._C.linear_isa()
    linear._C.set_linear_isa(request.param)
    try:
        yield request.param
    finally:
        linear._C.set_linear_isa(default)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def assert_matches(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype) -> None:
    ref = linear.reference(x, weight, torch.float32)
    assert out.dtype == out_dtype and out.shape == ref.shape
    scale = linear.reference(x.abs(), weight.abs(), torch.float32)
    excess = (out.float() - ref).abs() - (RTOL[out_dtype] * ref.abs() + ABS_TOL * scale)
    assert not bool((excess.isnan() | (excess > 0)).any()), f"worst excess {excess.nan_to_num(math.inf).max()}"


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("m", MS)
def test_matches_reference(m: int, n: int, k: int, out_dtype: torch.dtype) -> None:
    x, weight = randn(m, k, seed=m * 7919 + k), randn(n, k, seed=n * 104729 + k)
    assert_matches(linear.linear(x, linear.pack(weight), out_dtype), x, weight, out_dtype)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("m, n, k", [(1, 577, 130), (3, 15, 64), (17, 192, 576), (64, 1536, 1536), (257, 33, 2),
                                     (33, 40, 100), (100, 40, 4101)])
def test_isa_variants(isa: str, m: int, n: int, k: int, out_dtype: torch.dtype) -> None:
    x, weight = randn(m, k, seed=1), randn(n, k, seed=2)
    assert_matches(linear.linear(x, linear.pack(weight), out_dtype), x, weight, out_dtype)


@pytest.mark.parametrize("m, k", [(1, 130), (17, 577), (64, 576)])
def test_bf16_output_is_fp32_output_rounded(isa: str, m: int, k: int) -> None:
    """Both outputs come from the same sums; bf16 rounds them to nearest even, as torch does."""
    x, packed = randn(m, k, seed=3), linear.pack(randn(577, k, seed=4))
    assert torch.equal(linear.linear(x, packed), linear.linear(x, packed, torch.float32).to(torch.bfloat16))


@pytest.mark.parametrize("m, n, k", [(1, 577, 130), (4, 40, 64), (17, 577, 577), (64, 33, 576)])
def test_a_bias_is_added_to_the_fp32_sums_before_the_rounding(isa: str, m: int, n: int, k: int) -> None:
    """In the kernel's store: the bits of the fp32 output plus the bias in fp32, rounded once (as torch's
    biased linear rounds), on every variant, past the tile's last column too (n % 32)."""
    x, packed = randn(m, k, seed=21), linear.pack(randn(n, k, seed=22))
    bias = randn(n, seed=23) * 4
    sums = linear.linear(x, packed, torch.float32)
    assert torch.equal(linear.linear(x, packed, torch.float32, bias), sums + bias.float())
    assert torch.equal(linear.linear(x, packed, bias=bias), (sums + bias.float()).to(torch.bfloat16))
    with pytest.raises(ValueError, match="bias"):
        linear.linear(x, packed, bias=bias[1:])


@pytest.mark.parametrize("k", [130, 131])
def test_strided_rows_are_read_within_bounds(isa: str, k: int) -> None:
    """x rows inside wider rows of NaN: any read past column k - 1 (odd k's padding pair) shows."""
    m, n = 17, 577
    wide = torch.full((m, k + 3), math.nan, dtype=torch.bfloat16)
    wide[:, :k] = randn(m, k, seed=5)
    x, weight = wide[:, :k], randn(n, k, seed=6)
    for out_dtype in OUT_DTYPES:
        assert_matches(linear.linear(x, linear.pack(weight), out_dtype), x, weight, out_dtype)


@pytest.mark.parametrize("k", [576, 577])
def test_single_row_at_any_alignment(isa: str, k: int) -> None:
    """x is read in place, in 32-bit pairs: a row at an odd element offset reads them unaligned."""
    weight = randn(577, k, seed=17)
    buffer = randn(k + 1, seed=18)
    for x in (buffer[:k].view(1, k), buffer[1:].view(1, k)):
        assert_matches(linear.linear(x, linear.pack(weight)), x, weight, torch.bfloat16)


def test_writes_exactly_the_output_block(isa: str) -> None:
    """Called with output rows wider than n: the kernel fills (m, n) and not a column more."""
    m, n, k = 13, 47, 64
    x, weight = randn(m, k, seed=7), randn(n, k, seed=8)
    packed = linear.pack(weight)
    for out_dtype, dtype_enum in ((torch.float32, linear._C.DType.float32), (torch.bfloat16, linear._C.DType.bfloat16)):
        out = torch.full((m, n + 5), math.nan, dtype=out_dtype)
        linear._C.linear_bf16(out=out.data_ptr(), x=x.data_ptr(), packed=packed.data.data_ptr(), out_dtype=dtype_enum,
                              m=m, n=n, k=k, x_row_stride=k, out_row_stride=n + 5, num_threads=2)
        assert out[:, n:].isnan().all()
        assert_matches(out[:, :n], x, weight, out_dtype)


def test_leading_dims_and_layouts() -> None:
    weight = randn(192, 64, seed=9)
    packed = linear.pack(weight)
    x = randn(2, 3, 64, seed=10)
    out = linear.linear(x, packed)
    assert out.shape == (2, 3, 192)
    assert_matches(out.view(6, 192), x.view(6, 64), weight, torch.bfloat16)
    transposed = randn(64, 5, seed=11).T  # unit stride along M, not K
    assert_matches(linear.linear(transposed, packed), transposed, weight, torch.bfloat16)
    broadcast = randn(1, 64, seed=12).expand(4, 64)  # rows of stride 0
    assert_matches(linear.linear(broadcast, packed), broadcast, weight, torch.bfloat16)
    assert linear.linear(torch.empty(0, 64, dtype=torch.bfloat16), packed).shape == (0, 192)


def test_packed_layout() -> None:
    n, k = 40, 7
    weight = randn(n, k, seed=13)
    data = linear.pack(weight).data
    assert data.shape == (2, 4, 32, 2)
    padded = torch.zeros(64, 8, dtype=torch.bfloat16)
    padded[:n, :k] = weight
    assert torch.equal(data, padded.view(2, 32, 4, 2).transpose(1, 2))
    wide = torch.zeros(n, k + 9, dtype=torch.bfloat16)
    wide[:, :k] = weight
    assert torch.equal(linear.pack(wide[:, :k]).data, data)  # strided rows pack the same


def test_thread_count_does_not_change_results() -> None:
    x, packed = randn(37, 576, seed=14), linear.pack(randn(1536, 576, seed=15))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = linear.linear(x, packed, torch.float32)
        torch.set_num_threads(max(threads, 2))
        assert torch.equal(linear.linear(x, packed, torch.float32), single)
    finally:
        torch.set_num_threads(threads)


def test_a_rows_result_does_not_depend_on_the_batch(isa: str) -> None:
    """Batch invariance: a row's output is the same bits whatever rows come with it, so a
    sequence's tokens do not depend on how many others share its step or on a prefix-cache hit
    shortening its prefill (every row block sums K in one order)."""
    x, packed = randn(72, 578, seed=17), linear.pack(randn(1536, 578, seed=18))
    for out_dtype in OUT_DTYPES:
        whole = linear.linear(x, packed, out_dtype)
        for m in [*range(1, 15), 16, 17, 31, 32, 33, 40]:
            assert torch.equal(linear.linear(x[:m].contiguous(), packed, out_dtype), whole[:m]), m
        assert torch.equal(linear.linear(x[23:].contiguous(), packed, out_dtype), whole[23:])


def test_row_groups_give_each_row_the_same_bits(isa: str) -> None:
    """Row blocks in groups (a long K): the rows' outputs do not depend on the grouping."""
    x, packed = randn(200, 4096, seed=19), linear.pack(randn(64, 4096, seed=20))
    whole = linear.linear(x, packed)
    for rows in [slice(0, 1), slice(0, 40), slice(57, 200)]:
        assert torch.equal(linear.linear(x[rows].contiguous(), packed), whole[rows]), rows


@pytest.fixture
def amx() -> Iterator[None]:
    if "amx_bf16" not in isas():
        pytest.skip("needs a CPU with AMX")
    default = linear._C.linear_isa()
    linear._C.set_linear_isa("amx_bf16")
    try:
        yield
    finally:
        linear._C.set_linear_isa(default)


@pytest.mark.usefixtures("amx")
def test_tiles_configured_by_other_code_change_nothing() -> None:
    """Other code on the thread (oneDNN, in torch's bf16 matmul) configures the AMX tiles its own way:
    every call configures them again, whatever the thread last did."""
    x, packed = randn(48, 576, seed=21), linear.pack(randn(96, 576, seed=22))
    before = linear.linear(x, packed)
    other = randn(512, 320, seed=23)
    for m in [1, 17, 48]:
        torch.nn.functional.linear(other, other[:96])  # oneDNN's AMX tiles
        assert torch.equal(linear.linear(x[:m].contiguous(), packed), before[:m]), m
        linear._C.load_foreign_amx_config()  # 1-row, 4-byte tiles on this thread
        assert torch.equal(linear.linear(x[:m].contiguous(), packed), before[:m]), m


def test_rejects_bad_arguments() -> None:
    packed = linear.pack(randn(8, 16, seed=16))
    with pytest.raises(ValueError, match="bfloat16"):
        linear.linear(torch.zeros(2, 16), packed)
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\)"):
        linear.linear(torch.zeros(2, 15, dtype=torch.bfloat16), packed)
    with pytest.raises(ValueError, match="out_dtype"):
        linear.linear(torch.zeros(2, 16, dtype=torch.bfloat16), packed, torch.float16)
    with pytest.raises(ValueError, match="2-D bfloat16"):
        linear.pack(torch.zeros(8, 16))
    with pytest.raises(ValueError, match="unknown ISA"):
        linear._C.set_linear_isa("sse9")
    with pytest.raises(ValueError, match="packed data"):
        linear.PackedLinearWeight(packed.data, 8, 18)


@pytest.mark.parametrize("n,k", [(1, 2), (15, 129), (577, 576), (49, 1536)])
def test_gather_rows_reads_rows_of_the_packed_weight(n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n + k)
    weight = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    packed = linear.pack(weight)
    ids = torch.randint(0, n, (3, 5), generator=gen)
    ids[0, 0], ids[-1, -1] = 0, n - 1
    got = linear.gather_rows(packed, ids)
    assert got.shape == (3, 5, k)
    assert torch.equal(got, weight[ids])


@pytest.mark.parametrize("bad", [-1, 40])
def test_gather_rows_refuses_ids_out_of_range(bad: int) -> None:
    packed = linear.pack(torch.zeros(40, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="out of range"):
        linear.gather_rows(packed, torch.tensor([0, bad]))


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("counts", [[1], [3, 0, 1, 13], [0, 25, 2, 0, 1, 12, 7], [40]])
def test_grouped_rows_are_the_bits_each_weight_gives_alone(isa: str, counts: list[int],
                                                            out_dtype: torch.dtype) -> None:
    """A mixture of experts' grouped call: each group's rows equal linear() over them with its own
    weight (empty groups included, 13 and 25 rows making uneven row blocks)."""
    weights = [linear.pack(randn(160, 130, seed=30 + g)) for g in range(len(counts))]
    x = randn(sum(counts), 130, seed=29)
    starts = [0, *[sum(counts[:g + 1]) for g in range(len(counts))]]

    out = linear.grouped_linear(x, weights, starts, out_dtype)

    for g, packed in enumerate(weights):
        rows = slice(starts[g], starts[g + 1])
        assert torch.equal(out[rows], linear.linear(x[rows].contiguous(), packed, out_dtype)), g


def test_grouped_rejects_bad_arguments() -> None:
    weights = [linear.pack(randn(8, 16, seed=g)) for g in range(2)]
    x = torch.zeros(5, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="rise from 0 to 5"):
        linear.grouped_linear(x, weights, [0, 4, 3])
    with pytest.raises(ValueError, match="rise from 0 to 5"):
        linear.grouped_linear(x, weights, [0, 2, 4])
    with pytest.raises(ValueError, match="one row start more"):
        linear.grouped_linear(x, weights, [0, 5])
    with pytest.raises(ValueError, match="same shape"):
        linear.grouped_linear(x, [weights[0], linear.pack(randn(9, 16, seed=3))], [0, 2, 5])
    with pytest.raises(ValueError, match=r"\(M, 16\)"):
        linear.grouped_linear(torch.zeros(5, 15, dtype=torch.bfloat16), weights, [0, 2, 5])
