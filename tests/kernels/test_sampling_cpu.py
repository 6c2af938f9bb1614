"""CPU sampling (csrc/cpu/sampling.cpp): the distribution random draws come from is the torch
path's (engine/sampler.py), token for token over a fine grid of uniforms; rows are independent;
the greedy argmax is torch.argmax's, ties and NaN included."""
from __future__ import annotations

import pytest
import torch

from engine import sampler
from engine.kernels import sampling

pytestmark = pytest.mark.skipif(not sampling.supported(), reason="engine._C not built with sample_rows")

GRID = 20000  # uniforms (i + 0.5) / GRID: a token of probability p is drawn p * GRID times, +-1


def torch_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                min_p: float | None) -> torch.Tensor:
    """(V,) the kept distribution of the torch path for one row."""
    row = (logits / temperature).unsqueeze(0)
    k = torch.tensor([top_k]) if top_k is not None else None
    p = torch.tensor([top_p]) if top_p is not None else None
    if k is not None or p is not None:
        kept, order = sampler._apply_top_k_top_p(row, k, p)
        if order is not None:
            kept = torch.full_like(row, float("-inf")).scatter_(1, order, kept)
        row = kept
    probs = torch.softmax(row, dim=-1)[0]
    if min_p is not None:
        probs = probs.masked_fill(probs < min_p * probs.max(), 0.0)
        probs = probs / probs.sum()
    return probs


def drawn_frequencies(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                      min_p: float | None) -> torch.Tensor:
    rows = logits.unsqueeze(0).expand(GRID, -1).contiguous()
    uniforms = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID

    def col(value: float | int | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if value is None else torch.full((GRID,), value, dtype=dtype)

    ids = sampling.sample_rows(rows, torch.full((GRID,), temperature), col(top_k, torch.int64),
                               col(top_p, torch.float32), col(min_p, torch.float32), uniforms)
    return torch.bincount(ids, minlength=logits.shape[0]).double() / GRID


SETTINGS = [  # temperature, top_k, top_p, min_p
    (1.0, None, None, None), (0.7, None, None, None), (1.0, 40, None, None), (0.8, None, 0.9, None),
    (0.8, 40, 0.95, None), (1.0, None, None, 0.05), (1.3, 100, 0.9, 0.02), (1.0, 1, None, None),
    (1.0, None, 0.01, None),
]


@pytest.mark.parametrize("spread", [6.0, 0.3])  # peaked like a model's; nearly flat (the full-sort path)
@pytest.mark.parametrize("temperature, top_k, top_p, min_p", SETTINGS)
def test_draws_follow_the_torch_paths_distribution(spread: float, temperature: float, top_k: int | None,
                                                   top_p: float | None, min_p: float | None) -> None:
    vocab = 3001  # off every vector width
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(int(spread * 10) + vocab)) * spread
    expected = torch_probs(logits, temperature, top_k, top_p, min_p).double()
    got = drawn_frequencies(logits, temperature, top_k, top_p, min_p)
    assert bool((got[expected == 0] == 0).all()), "a token outside the kept set was drawn"
    assert (got - expected).abs().max() <= 1.5 / GRID + 1e-6


def test_near_one_top_p_reaches_past_the_candidates() -> None:
    # Ten likely tokens and a far tail (beyond 20 nats) holding 6e-7 of the mass: a top-p of
    # 1 - 1.2e-7 needs tail tokens, so the whole row is sorted.
    logits = torch.cat([torch.zeros(10), torch.full((5000,), -20.5)])
    top_p = 0.9999999
    expected = torch_probs(logits, 1.0, None, top_p, None).double()
    assert 10 < int((expected > 0).sum()) < logits.numel()
    got = drawn_frequencies(logits, 1.0, None, top_p, None)
    assert bool((got[expected == 0] == 0).all()) and (got - expected).abs().max() <= 1.5 / GRID


def test_rows_are_independent_of_the_batch_and_the_threads() -> None:
    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(5)) * 4
    temperature = torch.full((64,), 0.8)
    top_p = torch.full((64,), 0.9)
    uniforms = torch.rand(64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sampling.sample_rows(logits, temperature, None, top_p, None, uniforms)
        torch.set_num_threads(max(threads, 2))
        assert torch.equal(sampling.sample_rows(logits, temperature, None, top_p, None, uniforms), one)
    finally:
        torch.set_num_threads(threads)
    alone = sampling.sample_rows(logits[7:8], temperature[7:8], None, top_p[7:8], None, uniforms[7:8])
    assert alone.item() == one[7].item()


def test_bad_inputs_are_refused() -> None:
    logits = torch.zeros(2, 10, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        sampling.sample_rows(logits, torch.ones(2), None, None, None, torch.zeros(2))
    with pytest.raises(ValueError, match="one value per row"):
        sampling.sample_rows(torch.zeros(2, 10), torch.ones(3), None, None, None, torch.zeros(2))


@pytest.mark.parametrize("vocab", [1, 7, 16, 17, 49152, 49157])
@pytest.mark.parametrize("threads", [1, 2])
def test_argmax_is_torch_argmax(vocab: int, threads: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(40, vocab, generator=gen)
    # Rows with ties at several places (the first must win), all -inf, +inf, -0.0 against 0.0,
    # NaN (torch counts it the largest) before and after the maximum, and coarse values.
    logits[1] = 3.0
    logits[2] = -torch.inf
    logits[3, vocab // 2] = torch.inf
    logits[4, :] = 0.0
    logits[4, 0] = -0.0
    logits[5, vocab - 1] = torch.nan
    logits[6, vocab // 3] = torch.nan
    logits[6, vocab - 1] = 100.0
    logits[7] = torch.randint(0, 3, (vocab,), generator=gen).float()
    logits[8, -(vocab // 2 + 1):] = logits[8].max() + 1  # equal maxima in the tail past the vectors
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(sampling.argmax_rows(logits), logits.argmax(dim=-1))
        view = logits[::3]  # rows further apart than their length
        assert torch.equal(sampling.argmax_rows(view), view.argmax(dim=-1))
    finally:
        torch.set_num_threads(before)


def test_argmax_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="float32"):
        sampling.argmax_rows(torch.zeros(2, 10, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        sampling.argmax_rows(torch.zeros(10, 2).t())
    assert sampling.argmax_rows(torch.zeros(0, 10)).shape == (0,)

