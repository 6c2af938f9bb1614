"""pytest-benchmark timings of the engine's per-step hot paths: the block manager, a scheduler step
with 256 running sequences, the sampler at batch 64. `make microbench` runs them (see README);
`make test` never collects bench/ (testpaths), and tests/bench runs each once, untimed."""
from __future__ import annotations

import torch

from engine.block_manager import BlockManager
from engine.sampler import SamplingBatch, sample
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence

VOCAB = 49152


def make_seq(seq_id: int, tokens: list[int], max_tokens: int = 256, params: SamplingParams | None = None) -> Sequence:
    return Sequence(seq_id=seq_id, request_id=f"r{seq_id}", index=0, token_ids=list(tokens),
                    num_prompt_tokens=len(tokens), params=params or SamplingParams(max_tokens=max_tokens),
                    max_num_tokens=len(tokens) + max_tokens)


def test_block_manager_prefix_hit_allocate_free(benchmark) -> None:
    """A 512-token prompt whose first 496 tokens are cached: match, allocate the rest, register, free."""
    bm = BlockManager(4096, 16, True)
    prompt = [(i * 7919) % VOCAB for i in range(512)]
    warm = make_seq(0, prompt)
    bm.allocate(warm, len(prompt), bm.match_prefix(warm))
    warm.num_computed_tokens = len(prompt)
    bm.cache_full_blocks(warm)
    bm.free(warm)
    ids = iter(range(1, 10**9))

    def admit_and_free() -> int:
        seq = make_seq(next(ids), prompt[:-16] + [1] * 16)
        hits = bm.match_prefix(seq)
        assert bm.allocate(seq, seq.num_tokens - len(hits) * 16, hits)
        seq.num_computed_tokens = seq.num_tokens
        bm.cache_full_blocks(seq)
        bm.free(seq)
        return len(hits)

    assert benchmark(admit_and_free) == 31


def test_scheduler_decode_step_256_running(benchmark) -> None:
    """schedule() + after_step() of a decode step with 256 running sequences (1k-token contexts)."""
    bm = BlockManager(256 * 96, 16, True)  # room for 1536 tokens each: 1000 + the rounds below
    sched = Scheduler(bm, max_num_seqs=256, max_num_batched_tokens=256 * 1024)
    seqs = [make_seq(i, [(i * 31 + j) % VOCAB for j in range(1000)], max_tokens=10**6) for i in range(256)]
    for seq in seqs:
        sched.add(seq)
    batch = sched.schedule()  # the prefills
    sched.after_step(batch)
    for seq in seqs:
        seq.token_ids.append(7)

    def step() -> int:
        batch = sched.schedule()
        sched.after_step(batch)
        for seq in batch.seqs:
            seq.token_ids.append(7)
        return len(batch.seqs)

    assert benchmark.pedantic(step, rounds=300, iterations=1) == 256


def peaked_logits(rows: int) -> torch.Tensor:
    """Random logits as peaked as a language model's: at temperature 0.8 the 256 likeliest tokens
    hold >= 99% of each row's mass (N(0, 6^2) over 49k tokens)."""
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(0)) * 6


def test_sampler_batch_64_top_p(benchmark) -> None:
    """SamplingBatch.from_seqs + sample for 64 rows over SmolLM2's vocabulary: temperature and top-p."""
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16)
    seqs = [make_seq(i, [1, 2, 3], params=params) for i in range(64)]
    logits = peaked_logits(64)

    def draw() -> torch.Tensor:
        return sample(logits, SamplingBatch.from_seqs(seqs, VOCAB)).token_ids

    assert benchmark(draw).shape == (64,)


def test_sampler_batch_64_top_k_top_p(benchmark) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.95, top_k=50, max_tokens=16)
    seqs = [make_seq(i, [1, 2, 3], params=params) for i in range(64)]
    logits = peaked_logits(64)
    assert benchmark(lambda: sample(logits, SamplingBatch.from_seqs(seqs, VOCAB)).token_ids).shape == (64,)


def test_sampler_batch_64_greedy(benchmark) -> None:
    seqs = [make_seq(i, [1, 2, 3], params=SamplingParams(temperature=0, max_tokens=16)) for i in range(64)]
    logits = peaked_logits(64)
    expected = logits.argmax(dim=-1)
    assert torch.equal(benchmark(lambda: sample(logits, SamplingBatch.from_seqs(seqs, VOCAB)).token_ids), expected)
