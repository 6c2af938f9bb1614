"""The fused mixture-of-experts kernel (engine/kernels/triton/fused_moe.py) against the token-by-token
float32 oracle (engine/kernels/moe.py reference), the alignment's invariants, and the MoE block's
dispatch to it.

On a machine without CUDA the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, float32, tiny
odd shapes and tiles); with CUDA it runs compiled on random shapes in every dtype, and a captured
CUDA graph replayed over new routings equals the eager call. Outputs the kernel allocates are
NaN-poisoned, so a row left unwritten shows.
"""
from __future__ import annotations

import math
import os
import random

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from engine.config import ModelConfig  # noqa: E402
from engine.kernels import moe  # noqa: E402
from engine.kernels.triton import fused_moe as fused  # noqa: E402
from engine.models.moe import SparseMoeBlock  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SMALL = fused.Tiles(16, 16, 16)  # the interpreter's tiles: H and I below are no multiple of them


def _routing(kind: str, num_tokens: int, num_experts: int, top_k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (T, top_k) float32, ids (T, top_k) int64) from a softmax router, distinct experts per
    token. "random"; "one": every token's first choice is expert 1 (all tokens on one expert when top_k
    is 1), the others still weigh; "unused": only expert 1 and the last top_k are ever chosen."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=gen)
    if kind == "one":
        logits[:, 1] = logits.max(dim=1).values + 0.5
    elif kind == "unused":
        allowed = torch.zeros(num_experts, dtype=torch.bool)
        allowed[1] = allowed[num_experts - top_k:] = True
        logits = logits.masked_fill(~allowed, -math.inf)
    return moe.route(logits, top_k, renormalize=True)


def _experts(num_experts: int, hidden: int, inter: int, dtype: torch.dtype,
             seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """(w_gate_up, w_down, the generator for x), scaled so that with x ~ N(0, 1) every stage is O(1)."""
    gen = torch.Generator().manual_seed(seed)
    w_gate_up = torch.randn(num_experts, 2 * inter, hidden, generator=gen) / math.sqrt(hidden)
    w_down = torch.randn(num_experts, hidden, inter, generator=gen) / math.sqrt(inter)
    return w_gate_up.to(dtype), w_down.to(dtype), gen


@pytest.fixture
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.empty's float tensors NaN-filled while the test runs (act, partial)."""
    empty = torch.empty

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        t = empty(*args, **kwargs)
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


def _check(num_tokens: int, num_experts: int, top_k: int, hidden: int, inter: int, kind: str,
           dtype: torch.dtype, tiles: fused.Tiles | None, seed: int = 0) -> None:
    w_gate_up, w_down, gen = _experts(num_experts, hidden, inter, dtype, seed)
    x = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
    weights, ids = _routing(kind, num_tokens, num_experts, top_k, seed + 1)
    got = fused.fused_moe(x.to(DEVICE), w_gate_up.to(DEVICE), w_down.to(DEVICE), weights.to(DEVICE),
                          ids.to(DEVICE), tiles)
    assert got.dtype == dtype and got.shape == x.shape and not got.isnan().any()
    want = moe.reference(x, weights, ids, w_gate_up, w_down)
    torch.testing.assert_close(got.float().cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


# (T, E, top_k, H, I, routing): T = 1, 3, 17; H and I no multiple of 16; experts nobody chooses; all
# tokens on one expert (17 rows: two blocks of one expert).
CPU_CASES = [(1, 4, 1, 40, 24, "random"), (1, 8, 3, 33, 20, "random"), (3, 6, 2, 40, 24, "random"),
             (17, 8, 3, 33, 20, "random"), (17, 7, 2, 40, 24, "unused"), (17, 4, 1, 40, 24, "one"),
             (17, 5, 3, 24, 40, "one")]


@pytest.mark.skipif(CUDA, reason="the interpreter's cases; the GPU runs its own")
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "t{}-e{}-k{}-h{}-i{}-{}".format(*c))
@pytest.mark.parametrize("tiles", [SMALL, fused.Tiles(32, 16, 32), None], ids=["m16n16k16", "m32n16k32", "default"])
def test_fused_moe_matches_the_oracle(case: tuple, tiles: fused.Tiles | None, poisoned_outputs: None) -> None:
    _check(*case, dtype=torch.float32, tiles=tiles)


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [(1, 4, 1, 16), (3, 6, 2, 16), (17, 8, 3, 16),
                                                                  (40, 5, 2, 16), (33, 8, 2, 64)])
@pytest.mark.parametrize("kind", ["random", "one", "unused"])
def test_alignment_invariants(num_tokens: int, num_experts: int, top_k: int, block_m: int, kind: str) -> None:
    _, ids = _routing(kind, num_tokens, num_experts, top_k, seed=num_tokens)
    sorted_pairs, block_expert = (t.cpu() for t in fused.align(ids.to(DEVICE), num_experts, block_m))
    flat, num_pairs = ids.reshape(-1), ids.numel()
    rows = fused.padded_rows_bound(num_pairs, num_experts, block_m)
    assert sorted_pairs.shape == (rows,) and block_expert.shape == (rows // block_m,)
    assert sorted_pairs.dtype == block_expert.dtype == torch.int32
    real = sorted_pairs < num_pairs
    assert torch.equal(sorted_pairs[real].sort().values, torch.arange(num_pairs, dtype=torch.int32))  # each once
    assert (sorted_pairs[~real] == num_pairs).all()  # padding marked with N
    counts = torch.bincount(flat, minlength=num_experts)
    want_blocks = [e for e in range(num_experts) for _ in range(-(-int(counts[e]) // block_m))]
    assert block_expert.tolist() == want_blocks + [num_experts] * (len(block_expert) - len(want_blocks))
    for block, expert in enumerate(block_expert.tolist()):
        pairs = sorted_pairs[block * block_m:(block + 1) * block_m]
        valid = pairs[pairs < num_pairs]
        if expert == num_experts:  # past the real blocks: padding only
            assert valid.numel() == 0
            continue
        assert valid.numel() > 0 and (flat[valid.long()] == expert).all()  # one expert a block
        assert torch.equal(pairs[:valid.numel()], valid)  # its run first, then the padding
    for expert in range(num_experts):  # stable: an expert's pairs in pair order
        mine = sorted_pairs[real][flat[sorted_pairs[real].long()] == expert]
        assert torch.equal(mine, mine.sort().values)


def test_the_padded_bound_is_reached_when_every_pair_has_its_own_expert() -> None:
    ids = torch.arange(6).view(3, 2)  # 6 pairs, 6 of 8 experts, one row each
    sorted_pairs, block_expert = fused.align(ids.to(DEVICE), 8, 16)
    assert sorted_pairs.numel() == 6 * 16 and block_expert.tolist() == list(range(6))


@pytest.mark.skipif(CUDA, reason="CPU dispatch")
def test_the_moe_block_takes_the_fused_path_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the block sends its stacked experts to fused_moe; here, in the interpreter, with
    fused_runs forced on, it must give the oracle's sum and never reach the host-counted loop."""
    assert not moe.fused_runs(torch.device("cpu"))
    e, h, i, k = 6, 40, 24, 2
    config = ModelConfig(architecture="mixtral", vocab_size=100, hidden_size=h, intermediate_size=i, num_layers=1,
                         num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4,
                         max_position_embeddings=64, tie_word_embeddings=False, num_experts=e,
                         num_experts_per_tok=k, moe_intermediate_size=i)
    block = SparseMoeBlock(config)
    w_gate_up, w_down, gen = _experts(e, h, i, torch.float32, seed=3)
    router = torch.randn(e, h, generator=gen)
    weights = {"gate.weight": router, **{f"experts.{n}.{p}.weight": t for n in range(e) for p, t in
                                         zip(("gate_proj", "up_proj"), w_gate_up[n].chunk(2))}}
    weights |= {f"experts.{n}.down_proj.weight": w_down[n] for n in range(e)}
    block.load(weights.pop, "", torch.float32, torch.device("cpu"))
    monkeypatch.setattr(moe, "fused_runs", lambda device: True)
    monkeypatch.setattr(moe, "experts_forward", lambda *args: pytest.fail("the host-counted loop ran"))
    x = torch.randn(5, h, generator=gen)

    got = block(x)

    route_weights, ids = moe.route(x @ router.T, k, renormalize=True)
    torch.testing.assert_close(got, moe.reference(x, route_weights, ids, w_gate_up, w_down), atol=1e-4, rtol=1e-4)


def _gpu_cases() -> list[tuple]:
    """Random (T, E, top_k, H, I, routing), odd sizes among them; the experts' weights bounded (30M
    values) so that generating them and the CPU oracle stay quick."""
    rng = random.Random(0)
    cases = [(1, 8, 2, 1024, 1200, "random"), (257, 8, 2, 520, 700, "random"), (130, 32, 8, 512, 384, "random"),
             (64, 16, 1, 1000, 384, "one"), (33, 60, 4, 200, 96, "unused")]
    while len(cases) < 9:
        experts, hidden, inter = rng.choice([4, 8, 16, 60, 128]), rng.choice([200, 520, 1000, 2048]), \
            rng.choice([96, 384, 700, 768])
        if experts * 3 * inter * hidden <= 30_000_000:
            cases.append((rng.choice([1, 2, 5, 17, 64, 100]), experts, rng.choice([1, 2, 4, min(8, experts)]),
                          hidden, inter, "random"))
    return cases


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", _gpu_cases(), ids=lambda c: "t{}-e{}-k{}-h{}-i{}-{}".format(*c))
def test_fused_moe_matches_the_oracle_on_gpu(case: tuple, dtype: torch.dtype, poisoned_outputs: None) -> None:
    _check(*case, dtype=dtype, tiles=None)


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("num_tokens", [1, 8, 64])
def test_a_captured_graph_replays_new_routings(num_tokens: int) -> None:
    """One capture over static buffers; each replay, with other tokens, weights and experts (spread,
    all on one expert, some unused), equals the eager call exactly. Nothing syncs with the host."""
    e, k, h, i, dtype = 16, 4, 512, 320, torch.bfloat16
    w_gate_up, w_down, gen = _experts(e, h, i, dtype, seed=7)
    w_gate_up, w_down = w_gate_up.cuda(), w_down.cuda()
    x = torch.randn(num_tokens, h, generator=gen).to(dtype).cuda()
    weights, ids = (t.cuda() for t in _routing("random", num_tokens, e, k, seed=8))
    fused.fused_moe(x, w_gate_up, w_down, weights, ids)  # compiles the kernels outside the capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync raises
    try:
        fused.fused_moe(x, w_gate_up, w_down, weights, ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused.fused_moe(x, w_gate_up, w_down, weights, ids)
    for seed, kind in enumerate(["random", "one", "unused"], start=9):
        new_weights, new_ids = _routing(kind, num_tokens, e, k, seed)
        x.copy_(torch.randn(num_tokens, h, generator=gen).to(dtype))
        weights.copy_(new_weights)
        ids.copy_(new_ids)
        graph.replay()
        want = fused.fused_moe(x, w_gate_up, w_down, weights, ids)
        assert torch.equal(out, want), kind
        oracle = moe.reference(x.cpu(), new_weights, new_ids, w_gate_up.cpu(), w_down.cpu())
        torch.testing.assert_close(out.float().cpu(), oracle, atol=TOL[dtype], rtol=TOL[dtype])
