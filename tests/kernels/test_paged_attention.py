"""paged_attention: every backend against a dense causal attention, and against each other."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from engine.kernels import ops, reference
from engine.kernels.triton.testing import poison_before_windows

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not ops.cpp_available(), reason="engine._C not built")),
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}

# (query tokens, context length including them) per sequence.
DECODES = [(1, 37), (1, 1), (1, 16), (1, 100), (1, 300)]  # 300: several staged spans
FRESH_PREFILL = [(23, 23)]
MIXED = [(1, 50), (7, 40), (1, 3), (33, 33), (5, 5), (16, 49)]  # chunks on top of cached context
LONG_CHUNK = [(70, 131), (1, 64)]
# (num_heads, num_kv_heads, head_dim, block_size): GQA ratios 1, 3, 4; the two
# compiled head dims and a generic one; a block size that is no power of two.
SHAPES = [(4, 4, 64, 16), (9, 3, 64, 16), (8, 2, 128, 16), (9, 3, 128, 5), (12, 3, 72, 7)]
# Sliding windows against the contexts above: 1; shorter than most; one block (16) and equal to the
# decode of context 16; equal to the (5, 5), (16, 49) and (1, 50) contexts; longer than any.
WINDOWS = [1, 5, 16, 49, 50, 10_000]


@dataclass
class Batch:
    query: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    scale: float
    max_query_len: int
    max_context_len: int
    dense_k: list[torch.Tensor]  # per sequence, (context_len, num_kv_heads, head_dim)
    dense_v: list[torch.Tensor]

    def op_args(self) -> tuple:
        return (self.query, self.k_cache, self.v_cache, self.block_tables, self.context_lens,
                self.query_start_loc, self.scale, self.max_query_len, self.max_context_len)


def make_batch(seqs: list[tuple[int, int]], shape: tuple[int, int, int, int], dtype: torch.dtype,
               seed: int = 0) -> Batch:
    """A batch whose cache is filled through ops.write_kv_cache at shuffled blocks.

    Blocks no sequence owns stay NaN, and so do the block-table entries past a
    sequence's blocks (they point at such a block), so any read beyond what a
    sequence may see poisons the output.
    """
    num_heads, num_kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-ctx // block_size) for _, ctx in seqs]
    max_blocks = max(blocks_per_seq) + 1
    num_blocks = sum(blocks_per_seq) + 3
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    unused_block = ids.pop()
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    block_tables = torch.full((len(seqs), max_blocks), unused_block, dtype=torch.int32)
    dense_k, dense_v, queries = [], [], []
    for s, ((q_len, ctx), n_blocks) in enumerate(zip(seqs, blocks_per_seq)):
        block_tables[s, :n_blocks] = torch.tensor([ids.pop() for _ in range(n_blocks)])
        # K, V and Q are slices of one fused projection, as in the model.
        qkv = torch.randn(ctx, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
        key, value = qkv[:, num_heads:num_heads + num_kv_heads], qkv[:, num_heads + num_kv_heads:]
        positions = torch.arange(ctx)
        slots = block_tables[s, positions // block_size].long() * block_size + positions % block_size
        ops.write_kv_cache(key, value, k_cache, v_cache, slots)
        dense_k.append(key)
        dense_v.append(value)
        queries.append(qkv[ctx - q_len:, :num_heads])
    q_lens = [q for q, _ in seqs]
    fused = torch.randn(sum(q_lens), num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    fused[:, :num_heads] = torch.cat(queries)
    return Batch(
        query=fused[:, :num_heads],  # non-contiguous, like the model's view of its qkv projection
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables,
        context_lens=torch.tensor([ctx for _, ctx in seqs], dtype=torch.int32),
        query_start_loc=torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32),
        scale=1.0 / math.sqrt(head_dim),
        max_query_len=max(q_lens),
        max_context_len=max(ctx for _, ctx in seqs),
        dense_k=dense_k,
        dense_v=dense_v,
    )


def dense_attention(batch: Batch, sliding_window: int = 0) -> torch.Tensor:
    """Explicit causal softmax attention in float64, one sequence at a time, no paging; with
    sliding_window W > 0 the query at position p sees only keys j with p - j < W."""
    outs = []
    starts = batch.query_start_loc.tolist()
    for s, (k, v) in enumerate(zip(batch.dense_k, batch.dense_v)):
        q = batch.query[starts[s]:starts[s + 1]].double()
        group = q.shape[1] // k.shape[1]
        k = k.double().repeat_interleave(group, dim=1)
        v = v.double().repeat_interleave(group, dim=1)
        ctx, q_len = k.shape[0], q.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, k) * batch.scale
        p, j = torch.arange(ctx - q_len, ctx)[:, None], torch.arange(ctx)[None, :]
        allowed = j <= p
        if sliding_window > 0:
            allowed &= p - j < sliding_window
        probs = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
    return torch.cat(outs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not actual.isnan().any(), "read unwritten (NaN-poisoned) cache or output"
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the test once per backend, forced through the environment override."""
    monkeypatch.setenv(ops.BACKEND_ENV, request.param)


@pytest.fixture
def cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, "cpp")


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("seqs", [DECODES, FRESH_PREFILL, MIXED, LONG_CHUNK],
                         ids=["decode", "prefill", "mixed", "long-chunk"])
def test_matches_dense_attention(seqs: list[tuple[int, int]], shape: tuple[int, int, int, int],
                                 dtype: torch.dtype) -> None:
    batch = make_batch(seqs, shape, dtype)
    out = ops.paged_attention(*batch.op_args())
    assert out.shape == batch.query.shape and out.dtype == dtype
    assert_close(out, dense_attention(batch), dtype)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("window", WINDOWS)
def test_sliding_window_matches_dense(shape: tuple[int, int, int, int], dtype: torch.dtype, window: int) -> None:
    """Decodes, fresh prefills and chunks over cached prefixes in one batch, odd lengths and blocks."""
    batch = make_batch(DECODES + MIXED + LONG_CHUNK, shape, dtype, seed=3)
    out = ops.paged_attention(*batch.op_args(), sliding_window=window)
    assert_close(out, dense_attention(batch, window), dtype)


@pytest.mark.parametrize("window", [1, 3, 16, 17, 49, 50, 131, 10_000])
@pytest.mark.parametrize("shape", [(9, 3, 64, 16), (12, 3, 72, 7)], ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
def test_reference_window_matches_hand_masked_softmax(shape: tuple[int, int, int, int], window: int) -> None:
    """The oracle itself, in float64: the reference's window against softmax with (p - j < W) by hand."""
    batch = make_batch(MIXED + DECODES + LONG_CHUNK, shape, torch.float64)
    out = reference.paged_attention(*batch.op_args(), sliding_window=window)
    torch.testing.assert_close(out, dense_attention(batch, window), atol=1e-12, rtol=1e-12)


@pytest.mark.usefixtures("backend")
def test_no_window_is_full_causal_attention() -> None:
    batch = make_batch(MIXED, (9, 3, 64, 16), torch.float32)
    full = dense_attention(batch)
    for window in (0, None):
        assert_close(ops.paged_attention(*batch.op_args(), sliding_window=window), full, torch.float32)
    with pytest.raises(ValueError, match="sliding_window"):
        ops.paged_attention(*batch.op_args(), sliding_window=-1)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("padding", [-1, 2**31 - 1])
def test_ignores_block_table_padding(padding: int) -> None:
    """Entries past a sequence's blocks are arbitrary, even invalid ids."""
    batch = make_batch(MIXED, (9, 3, 64, 16), torch.float32)
    for s, ctx in enumerate(batch.context_lens.tolist()):
        batch.block_tables[s, -(-ctx // 16):] = padding
    assert_close(ops.paged_attention(*batch.op_args()), dense_attention(batch), torch.float32)


@pytest.mark.usefixtures("backend")
def test_empty_batch() -> None:
    k_cache = torch.zeros(2, 16, 3, 64)
    query = torch.zeros(0, 9, 64)
    no_seqs = torch.zeros(0, dtype=torch.int32)
    out = ops.paged_attention(query, k_cache, k_cache, torch.zeros(0, 4, dtype=torch.int32), no_seqs,
                              torch.zeros(1, dtype=torch.int32), 0.125, 0, 0)
    assert out.shape == (0, 9, 64)


needs_cpp = pytest.mark.skipif(not ops.cpp_available(), reason="engine._C not built")


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpp_writes_every_output_row(dtype: torch.dtype) -> None:
    batch = make_batch(MIXED, (9, 3, 64, 16), dtype)
    out = torch.full(batch.query.shape, math.nan, dtype=dtype)
    ops._cpp_paged_attention(*batch.op_args()[:7], out=out)
    assert_close(out, dense_attention(batch), dtype)


@needs_cpp
@pytest.mark.usefixtures("cpp")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("isa", ops._C.supported_cpu_isas() if ops.cpp_available() else [])
def test_cpp_isa_variants(isa: str, shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    """Every variant this CPU runs, not just the one picked at load time."""
    batch = make_batch(MIXED + LONG_CHUNK, shape, dtype, seed=1)
    default = ops._C.cpu_isa()
    ops._C.set_cpu_isa(isa)
    try:
        out = ops.paged_attention(*batch.op_args())
    finally:
        ops._C.set_cpu_isa(default)
    assert_close(out, dense_attention(batch), dtype)


@needs_cpp
@pytest.mark.usefixtures("cpp")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "h{}-kv{}-d{}-b{}".format(*s))
@pytest.mark.parametrize("window", [1, 13, 100])  # 100: the (1, 300) decode's window crosses spans
@pytest.mark.parametrize("isa", ops._C.supported_cpu_isas() if ops.cpp_available() else [])
def test_cpp_skips_keys_before_the_window(isa: str, window: int, shape: tuple[int, int, int, int],
                                          dtype: torch.dtype) -> None:
    """Keys before a sequence's first window are NaN and the block ids of the blocks wholly before it
    invalid: every variant must skip them (decode reads only its window's blocks) and stay exact."""
    batch = make_batch(MIXED + DECODES + LONG_CHUNK, shape, dtype, seed=4)
    poison_before_windows(batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
                          batch.query_start_loc, window)
    block_size = shape[3]
    q_lens = (batch.query_start_loc[1:] - batch.query_start_loc[:-1]).tolist()
    for s, (q_len, ctx) in enumerate(zip(q_lens, batch.context_lens.tolist())):
        batch.block_tables[s, :max(0, ctx - q_len - window + 1) // block_size] = -1
    default = ops._C.cpu_isa()
    ops._C.set_cpu_isa(isa)
    try:
        out = ops.paged_attention(*batch.op_args(), sliding_window=window)
    finally:
        ops._C.set_cpu_isa(default)
    assert_close(out, dense_attention(batch, window), dtype)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpp_window_writes_every_output_row(dtype: torch.dtype) -> None:
    batch = make_batch(MIXED + LONG_CHUNK, (9, 3, 64, 16), dtype)
    out = torch.full(batch.query.shape, math.nan, dtype=dtype)
    ops._cpp_paged_attention(*batch.op_args()[:7], out=out, sliding_window=3)
    assert_close(out, dense_attention(batch, 3), dtype)


@needs_cpp
@pytest.mark.usefixtures("cpp")
@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_thread_counts(threads: int) -> None:
    batch = make_batch(MIXED, (8, 2, 128, 16), torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.paged_attention(*batch.op_args())
    finally:
        torch.set_num_threads(before)
    assert_close(out, dense_attention(batch), torch.float32)


@needs_cpp
@pytest.mark.usefixtures("cpp")
def test_cpp_rejects_bad_metadata() -> None:
    batch = make_batch(DECODES, (4, 4, 64, 16), torch.float32)
    args = list(batch.op_args())
    bad_block = batch.block_tables.clone()
    bad_block[0, 0] = batch.k_cache.shape[0]
    with pytest.raises(ValueError, match="block id"):
        ops.paged_attention(*args[:3], bad_block, *args[4:])
    too_short = batch.context_lens.clone()
    too_short[0] = 0
    with pytest.raises(ValueError, match="context_lens"):
        ops.paged_attention(*args[:4], too_short, *args[5:])
    with pytest.raises(ValueError, match="contiguous"):
        ops.paged_attention(args[0], batch.k_cache.transpose(0, 1), batch.v_cache.transpose(0, 1), *args[3:])
    with pytest.raises(ValueError, match="invalid sizes"):  # the kernel's own check, under ops' one
        ops._cpp_paged_attention(*args[:7], out=torch.empty(batch.query.shape), sliding_window=-1)


def test_default_backend_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = torch.zeros(1)
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    assert ops._backend_for(probe) == ("cpp" if ops.cpp_available() else "torch")
    assert ops._backend_for(probe.half()) == "torch"  # no C++ kernel for float16
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    assert ops._backend_for(probe) == "torch"
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    with pytest.raises(ValueError, match=ops.BACKEND_ENV):
        ops._backend_for(probe)
    monkeypatch.setenv(ops.BACKEND_ENV, "cpp")
    monkeypatch.setattr(ops, "_C", None)
    with pytest.raises(RuntimeError, match="build_ext"):
        ops._backend_for(probe)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("window", [0, 7])
def test_backends_agree_through_ops(dtype: torch.dtype, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(MIXED + DECODES + LONG_CHUNK, (9, 3, 64, 16), dtype, seed=2)
    outs = {}
    for name in ("torch", "cpp"):
        monkeypatch.setenv(ops.BACKEND_ENV, name)
        outs[name] = ops.paged_attention(*batch.op_args(), sliding_window=window)
    assert_close(outs["cpp"], outs["torch"], dtype)


@pytest.mark.skipif(not ops.cpp_available(), reason="engine._C not built")
def test_cpu_attention_variant_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    default = ops._C.cpu_isa()
    try:
        for name in ops._C.supported_cpu_isas():
            monkeypatch.setenv(ops.CPU_ATTENTION_ENV, name)
            ops.select_cpu_attention()
            assert ops._C.cpu_isa() == name
        monkeypatch.setenv(ops.CPU_ATTENTION_ENV, "sse9")
        with pytest.raises(ValueError, match="LLMAAS_CPU_ATTENTION='sse9': this CPU runs "):
            ops.select_cpu_attention()
    finally:
        ops._C.set_cpu_isa(default)
    assert ops._C.supported_cpu_isas()[0] == default  # unset, the best the CPU runs (never amx_bf16)
    assert default != "amx_bf16"
