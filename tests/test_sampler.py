"""The sampler: each parameter does what it says, on batched tensors."""
from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.sampler import SamplingBatch, sample
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

VOCAB = 50


def make_seq(params: SamplingParams, tokens: list[int] | None = None, prompt_len: int = 3, seed_index: int = 0) -> Sequence:
    tokens = tokens if tokens is not None else [1, 2, 3]
    seq = Sequence(seq_id=0, request_id="r", index=seed_index, token_ids=list(tokens), num_prompt_tokens=prompt_len,
                   params=params, max_num_tokens=100)
    if params.seed is not None:
        seq.generator = torch.Generator().manual_seed(params.seed)
    return seq


def run(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    return sample(logits, SamplingBatch.from_seqs(seqs, VOCAB)).token_ids


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax() -> None:
    logits = random_logits(4)
    seqs = [make_seq(SamplingParams(temperature=0)) for _ in range(4)]
    assert run(logits, seqs).tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temperature", [1e-6, 2e-39, 5e-324])
def test_a_vanishing_temperature_is_greedy(temperature: float) -> None:
    # Dividing by a float32 denormal gives inf and NaN logits: such a temperature means greedy.
    logits = random_logits(4)
    seqs = [make_seq(SamplingParams(temperature=temperature)) for _ in range(4)]
    assert all(s.params.greedy for s in seqs)
    assert run(logits, seqs).tolist() == logits.argmax(-1).tolist()


def test_top_k_1_equals_greedy_at_any_temperature() -> None:
    logits = random_logits(8, seed=1)
    seqs = [make_seq(SamplingParams(temperature=1.5, top_k=1)) for _ in range(8)]
    for _ in range(5):
        assert run(logits, seqs).tolist() == logits.argmax(-1).tolist()


def test_top_k_restricts_to_k_best() -> None:
    logits = random_logits(1, seed=2).repeat(400, 1)
    allowed = set(logits[0].topk(3).indices.tolist())
    seqs = [make_seq(SamplingParams(temperature=5.0, top_k=3)) for _ in range(400)]
    drawn = set(run(logits, seqs).tolist())
    assert drawn <= allowed and len(drawn) == 3


def test_top_p_keeps_smallest_prefix_reaching_p() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (VOCAB - 4))
    logits = torch.log(probs.clamp_min(1e-30)).repeat(400, 1)
    seqs = [make_seq(SamplingParams(temperature=1.0, top_p=0.7)) for _ in range(400)]
    drawn = set(run(logits, seqs).tolist())
    assert drawn == {0, 1}  # 0.5 < 0.7 needs token 1 too; 0.8 >= 0.7 stops there


def test_min_p_drops_tokens_below_fraction_of_best() -> None:
    probs = torch.tensor([0.6, 0.3, 0.05, 0.05] + [0.0] * (VOCAB - 4))
    logits = torch.log(probs.clamp_min(1e-30)).repeat(400, 1)
    seqs = [make_seq(SamplingParams(temperature=1.0, min_p=0.2)) for _ in range(400)]
    assert set(run(logits, seqs).tolist()) == {0, 1}


def test_temperature_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1] + [0.0] * (VOCAB - 3))
    logits = torch.log(probs.clamp_min(1e-30)).repeat(6000, 1)
    seqs = [make_seq(SamplingParams(temperature=1.0)) for _ in range(6000)]
    counts = torch.bincount(run(logits, seqs), minlength=VOCAB).float() / 6000
    assert torch.allclose(counts[:3], probs[:3], atol=0.03)


def test_seed_reproduces_whatever_else_is_in_the_batch() -> None:
    logits = random_logits(1, seed=3)
    alone = []
    seq = make_seq(SamplingParams(temperature=1.0, seed=42))
    for _ in range(20):
        alone.append(run(logits, [seq]).item())
    seq = make_seq(SamplingParams(temperature=1.0, seed=42))
    others = [make_seq(SamplingParams(temperature=1.0)) for _ in range(5)]
    batched = []
    for _ in range(20):
        batch_logits = torch.cat([random_logits(3, seed=9), logits, random_logits(2, seed=8)])
        batched.append(run(batch_logits, others[:3] + [seq] + others[3:])[3].item())
    assert alone == batched
    assert len(set(alone)) > 1  # it really samples


def test_mixed_greedy_and_random_rows() -> None:
    logits = random_logits(2, seed=4)
    seqs = [make_seq(SamplingParams(temperature=0)), make_seq(SamplingParams(temperature=1.0, seed=1))]
    assert run(logits, seqs)[0].item() == logits[0].argmax().item()


def test_frequency_and_presence_penalties_apply_to_output_tokens_only() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 5] = 1.0
    logits[0, 6] = 0.9
    # prompt holds token 6; output holds token 5 twice
    seq = make_seq(SamplingParams(temperature=0, frequency_penalty=0.1), tokens=[6, 6, 6, 5, 5], prompt_len=3)
    assert run(logits, [seq]).item() == 6  # 1.0 - 2 * 0.1 = 0.8 < 0.9
    seq = make_seq(SamplingParams(temperature=0, presence_penalty=0.05), tokens=[6, 6, 6, 5, 5], prompt_len=3)
    assert run(logits, [seq]).item() == 5  # 1.0 - 0.05 = 0.95 > 0.9
    seq = make_seq(SamplingParams(temperature=0, presence_penalty=0.2), tokens=[6, 6, 6, 5, 5], prompt_len=3)
    assert run(logits, [seq]).item() == 6


def test_repetition_penalty_covers_prompt_and_output() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 5], logits[0, 6], logits[0, 7] = 2.0, 1.5, -1.0
    seq = make_seq(SamplingParams(temperature=0, repetition_penalty=2.0), tokens=[5, 1, 1], prompt_len=3)
    assert run(logits, [seq]).item() == 6  # 2.0 / 2 = 1.0 < 1.5
    batch = SamplingBatch.from_seqs([make_seq(SamplingParams(repetition_penalty=2.0), tokens=[7], prompt_len=1)], VOCAB)
    from engine.sampler import apply_penalties

    assert apply_penalties(logits, batch)[0, 7].item() == -2.0  # negative logits are multiplied


def test_logprobs_are_raw_log_softmax_with_top_n() -> None:
    logits = random_logits(2, seed=5)
    seqs = [make_seq(SamplingParams(temperature=0, logprobs=3)), make_seq(SamplingParams(temperature=0, logprobs=0))]
    out = sample(logits, SamplingBatch.from_seqs(seqs, VOCAB))
    expected = torch.log_softmax(logits, -1)
    assert torch.allclose(out.logprobs, expected.max(-1).values)
    assert out.top_token_ids[0].tolist() == expected[0].topk(3).indices.tolist()
    assert math.isclose(float(torch.logsumexp(expected[0], -1)), 0.0, abs_tol=1e-5)


def test_logit_bias_moves_its_rows_tokens_only() -> None:
    logits = random_logits(3, seed=6)
    best = logits.argmax(-1).tolist()
    forced = (best[1] + 7) % VOCAB
    seqs = [make_seq(SamplingParams(temperature=0, logit_bias={best[0]: -100.0}, logprobs=1)),
            make_seq(SamplingParams(temperature=0.8, logit_bias={forced: 100.0, best[1]: -100.0})),
            make_seq(SamplingParams(temperature=0))]
    batch = SamplingBatch.from_seqs(seqs, VOCAB)
    for _ in range(20):
        out = sample(logits, batch)
        biased = logits[0].clone()
        biased[best[0]] -= 100.0
        assert out.token_ids.tolist() == [int(biased.argmax()), forced, best[2]]
    # Logprobs stay the model's own (as the penalties leave them), and the caller's logits unchanged.
    assert torch.allclose(out.logprobs[0], torch.log_softmax(logits[0], -1)[out.token_ids[0]])
    assert logits.argmax(-1).tolist() == best


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("min_p", 2.0), ("n", 0),
    ("max_tokens", 0), ("presence_penalty", 3.0), ("frequency_penalty", -2.5), ("repetition_penalty", 0.0),
    ("logprobs", 21), ("stop", [""]), ("stop", ["x" * 1025]), ("logit_bias", {5: 101.0}), ("logit_bias", {-1: 1.0}),
])
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**{field: value})
    assert err.value.param == field


@pytest.mark.parametrize("spread", [8.0, 0.5])  # peaked: the candidates suffice; flat: the full sort runs
def test_top_k_top_p_candidates_keep_exactly_what_a_full_sort_keeps(spread: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import sampler

    vocab, rows = 2000, 6
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(3)) * spread
    top_k = torch.tensor([vocab, 40, vocab, 300, 5, vocab])  # vocab: disabled
    top_p = torch.tensor([0.9, 0.95, 0.5, 1.0, 0.8, 0.99])

    def full(k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        kept, order = sampler._apply_top_k_top_p(logits, k, p)
        return kept if order is None else torch.full_like(logits, float("-inf")).scatter_(1, order, kept)

    fast = full(top_k, top_p)
    only_p = full(None, top_p[[0, 2, 5]].repeat(2))
    only_k = full(top_k.clamp(max=300), None)
    monkeypatch.setattr(sampler, "TOP_CANDIDATES", vocab)  # forces the full sort
    assert torch.equal(fast, full(top_k, top_p))
    assert torch.equal(only_p, full(None, top_p[[0, 2, 5]].repeat(2)))
    assert torch.equal(only_k, full(top_k.clamp(max=300), None))
    kept = torch.isfinite(fast).sum(dim=-1)
    assert kept[1] <= 40 and kept[3] == 300 and kept[4] <= 5 and bool((kept >= 1).all())
