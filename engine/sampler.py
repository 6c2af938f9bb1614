"""Batched sampling: penalties, temperature, top-k, top-p, min-p, per-request seeds, logprobs.

Every transformation is one tensor operation over the (num_seqs, vocab) logits; Python loops run
over sequences only to gather their settings, never over the vocabulary. A row's draw inverts its
cumulative distribution at one uniform variate, taken from the sequence's own generator when it is
seeded: the same seed and request give the same tokens whatever else shares the batch, and a draw
costs one pass over the vocabulary (an exponential variate per token, the race form, cost more
than all the rest of a CPU step at batch 64: bench/micro). On CPU the draw itself (temperature,
top-k, top-p, min-p) runs in C++ (engine/kernels/sampling.py), at the same uniforms, and so does
greedy decoding's argmax (torch.argmax's rule: first of equals, NaN the largest).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels import sampling as cpu_sampling
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplingBatch:
    temperature: torch.Tensor  # (S,) float32; greedy rows hold 1.0
    greedy: torch.Tensor  # (S,) bool
    all_greedy: bool
    top_k: torch.Tensor | None  # (S,) int64, vocab size where disabled
    top_p: torch.Tensor | None  # (S,) float32
    min_p: torch.Tensor | None  # (S,) float32
    presence_penalty: torch.Tensor | None  # (S,)
    frequency_penalty: torch.Tensor | None  # (S,)
    output_counts: torch.Tensor | None  # (S, V) float32: occurrences of each token in the output
    repetition_penalty: torch.Tensor | None  # (S,)
    seen_tokens: torch.Tensor | None  # (S, V) bool: token occurs in prompt or output
    # (rows, token ids, biases), each (B,): logit_bias entries of every row that has some
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    generators: list[tuple[int, torch.Generator]]  # rows with their own seeded generator
    max_logprobs: int | None  # largest top-N asked in the batch; None if no row wants logprobs

    @classmethod
    def from_seqs(cls, seqs: list[Sequence], vocab_size: int, device: torch.device | str = "cpu") -> SamplingBatch:
        ps = [s.params for s in seqs]
        greedy = torch.tensor([p.temperature == 0.0 for p in ps], dtype=torch.bool)
        temperature = torch.tensor([p.temperature or 1.0 for p in ps], dtype=torch.float32)
        use_top_k = any(0 < p.top_k < vocab_size for p in ps)
        use_top_p = any(p.top_p < 1.0 for p in ps)
        use_min_p = any(p.min_p > 0.0 for p in ps)
        use_pf = any(p.presence_penalty or p.frequency_penalty for p in ps)
        use_rep = any(p.repetition_penalty != 1.0 for p in ps)
        logprobs = [p.logprobs for p in ps if p.logprobs is not None]

        def col(values: list[float]) -> torch.Tensor:
            return _to_device(torch.tensor(values, dtype=torch.float32), device)

        return cls(
            temperature=_to_device(temperature, device),
            greedy=_to_device(greedy, device),
            all_greedy=bool(greedy.all()),
            top_k=_to_device(torch.tensor([p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in ps]),
                             device) if use_top_k else None,
            top_p=col([p.top_p for p in ps]) if use_top_p else None,
            min_p=col([p.min_p for p in ps]) if use_min_p else None,
            presence_penalty=col([p.presence_penalty for p in ps]) if use_pf else None,
            frequency_penalty=col([p.frequency_penalty for p in ps]) if use_pf else None,
            output_counts=_token_counts([s.output_token_ids for s in seqs], vocab_size, device) if use_pf else None,
            repetition_penalty=col([p.repetition_penalty for p in ps]) if use_rep else None,
            seen_tokens=_token_counts([s.token_ids for s in seqs], vocab_size, device) > 0 if use_rep else None,
            logit_bias=_logit_bias(ps, device),
            generators=[(i, s.generator) for i, s in enumerate(seqs) if s.generator is not None],
            max_logprobs=max(logprobs) if logprobs else None,
        )


@dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor  # (S,) int64
    logprobs: torch.Tensor | None  # (S,) float32: logprob of each sampled token
    top_logprobs: torch.Tensor | None  # (S, N) float32
    top_token_ids: torch.Tensor | None  # (S, N) int64


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """logits: (S, V) float32, one row per sequence that samples this step."""
    raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.max_logprobs is not None else None
    logits = apply_penalties(logits, batch)
    token_ids = _argmax(logits)
    if not batch.all_greedy:
        sampled = _sample_random(logits, batch)
        token_ids = torch.where(batch.greedy, token_ids, sampled)
    if raw_logprobs is None:
        return SamplerOutput(token_ids, None, None, None)
    chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    top_logprobs, top_ids = raw_logprobs.topk(batch.max_logprobs, dim=-1) if batch.max_logprobs else (None, None)
    return SamplerOutput(token_ids, chosen, top_logprobs, top_ids)


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logit_bias, then the repetition, frequency and presence penalties; a new tensor where any
    applies (the caller's logits stay as they were)."""
    if batch.logit_bias is not None:
        rows, ids, biases = batch.logit_bias
        logits = logits.index_put((rows, ids), biases, accumulate=True)
    if batch.repetition_penalty is not None:
        assert batch.seen_tokens is not None
        penalty = batch.repetition_penalty.unsqueeze(1)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(batch.seen_tokens, penalized, logits)
    if batch.output_counts is not None:
        assert batch.presence_penalty is not None and batch.frequency_penalty is not None
        counts = batch.output_counts
        logits = logits - batch.frequency_penalty.unsqueeze(1) * counts
        logits = logits - batch.presence_penalty.unsqueeze(1) * (counts > 0).float()
    return logits


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.stride(1) == 1 and cpu_sampling.supported():
        return cpu_sampling.argmax_rows(logits)
    return logits.argmax(dim=-1)


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    uniforms = torch.rand(logits.shape[0], device=logits.device)
    for row, generator in batch.generators:
        uniforms[row] = torch.rand((), generator=generator, device=logits.device)
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and cpu_sampling.supported():
        return cpu_sampling.sample_rows(logits, batch.temperature, batch.top_k, batch.top_p, batch.min_p, uniforms)
    logits = logits / batch.temperature.unsqueeze(1)
    order = None
    if batch.top_k is not None or batch.top_p is not None:
        logits, order = _apply_top_k_top_p(logits, batch.top_k, batch.top_p)
    probs = torch.softmax(logits, dim=-1)
    if batch.min_p is not None:
        threshold = batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < threshold, 0.0)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1]
    # Strictly below the total (u x total can round up to it), and right=True: the first token whose
    # cumulative mass exceeds the value, which is never a zero-mass one.
    values = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))
    picked = torch.searchsorted(cdf, values.unsqueeze(1), right=True)
    return (picked if order is None else order.gather(1, picked)).squeeze(1)


# Tokens examined before a full sort: a top-p cut almost always falls among the most likely few
# hundred, and topk over them costs about one pass over the logits, a full vocabulary sort ~50.
TOP_CANDIDATES = 256


def _apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                       top_p: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drops (to -inf) every logit outside its row's top-k and outside the smallest prefix (by
    probability) whose mass reaches top-p, mass taken within the top-k when both apply. Returns
    (kept, order): the TOP_CANDIDATES likeliest logits of each row, descending, and their token
    ids, when every row's kept tokens are among them (sampling then works on those alone); else
    the whole (S, V) logits and None, after a full sort."""
    vocab = logits.shape[-1]
    cut_by_k = top_k < vocab if top_k is not None else torch.zeros(logits.shape[0], dtype=torch.bool,
                                                                   device=logits.device)
    full_lse = torch.logsumexp(logits, dim=-1) if top_p is not None else None
    k0 = max([TOP_CANDIDATES] + ([int(top_k[cut_by_k].max())] if bool(cut_by_k.any()) else []))
    if k0 < vocab:
        values, order = logits.topk(k0, dim=-1)
        kept, mass = _filter_sorted(values, top_k, top_p, cut_by_k, full_lse)
        resolved = cut_by_k if mass is None else cut_by_k | ((top_p < 1.0) & (mass >= top_p))
        if bool(resolved.all()):
            return kept, order
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    kept, _ = _filter_sorted(sorted_logits, top_k, top_p, cut_by_k, full_lse)
    return torch.full_like(logits, _NEG_INF).scatter_(1, order, kept), None


def _filter_sorted(values: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
                   cut_by_k: torch.Tensor, full_lse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """values: (S, K) each row's K largest logits, descending (K may be the whole vocabulary).
    Returns them with the dropped ones at -inf, and with top-p the probability mass of all K."""
    if top_k is not None:
        ranks = torch.arange(values.shape[-1], device=values.device).unsqueeze(0)
        values = values.masked_fill(ranks >= top_k.unsqueeze(1), _NEG_INF)
    if top_p is None:
        return values, None
    assert full_lse is not None
    # Mass within the row's top-k where top-k cut it (its kept tokens are all among the K), else
    # within the whole vocabulary.
    lse = torch.where(cut_by_k, torch.logsumexp(values, dim=-1), full_lse)
    probs = torch.exp(values - lse.unsqueeze(1))
    cumulative = probs.cumsum(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p; the first token always survives.
    return values.masked_fill(cumulative - probs >= top_p.unsqueeze(1), _NEG_INF), cumulative[:, -1]


def _logit_bias(params: list[SamplingParams], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The batch's biases as (row, token id, bias) columns: only those travel to the device, never
    an (S, V) matrix."""
    entries = [(row, token, bias) for row, p in enumerate(params) for token, bias in p.logit_bias.items()]
    if not entries:
        return None
    rows, ids, biases = zip(*entries)
    return (_to_device(torch.tensor(rows, dtype=torch.int64), device),
            _to_device(torch.tensor(ids, dtype=torch.int64), device),
            _to_device(torch.tensor(biases, dtype=torch.float32), device))


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory without waiting: a pageable copy
    would block the host until the GPU finished the step's forward pass."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _token_counts(token_lists: list[list[int]], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """(S, V) float32 counts of each token id per row."""
    width = max((len(t) for t in token_lists), default=0)
    # Padding points at an extra column that is dropped afterwards.
    ids = torch.full((len(token_lists), max(width, 1)), vocab_size, dtype=torch.int64)
    for row, tokens in enumerate(token_lists):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    # The ids travel (S x longest list), the (S, V) counts are made where they are used: on a GPU
    # with a 128k vocabulary they would be 0.5 MB a row to copy every step.
    ids = _to_device(ids, device)
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab_size]
