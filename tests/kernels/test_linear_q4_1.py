"""The Q4_1 form of a linear weight: the kernel gives the bf16 kernel's bits on the dequantized
weight, the loader's raw blocks are the bf16 weights' own (Q/K rows unpermuted alike), and
the engine's greedy tokens do not change with it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine import LLM, SamplingParams
from engine.kernels import linear
from engine.loader.gguf_loader import Q4_1_SUFFIX, load_gguf
from engine.loader.gguf_quants import _q4_1

pytestmark = pytest.mark.skipif(not linear.q4_1_supported(), reason="needs engine._C on an avx512_bf16 or AMX CPU")

MAX_ROWS = linear._C.Q4_1_MAX_ROWS if linear.supported() else 0
# Off the 32-feature tile, one block and SmolLM2's widths.
SHAPES = [(1, 32), (40, 64), (200, 576), (577, 1536)]


def random_blocks(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k / 32 * 20) GGUF Q4_1 blocks: random nibbles, d in (1e-4, 0.02], m in [-0.1, 0.1]."""
    blocks = torch.randint(0, 256, (n * k // 32, 20), dtype=torch.uint8, generator=generator)
    d = (torch.rand(n * k // 32, generator=generator) * 0.02 + 1e-4).half()
    m = ((torch.rand(n * k // 32, generator=generator) - 0.5) * 0.2).half()
    blocks[:, 0:2] = d.view(torch.uint8).view(-1, 2)
    blocks[:, 2:4] = m.view(torch.uint8).view(-1, 2)
    return blocks.reshape(n, -1)


def dequantized(blocks: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The loader's bf16 weight for these blocks."""
    return _q4_1(blocks.reshape(-1, 20)).reshape(n, k).to(torch.bfloat16)


@pytest.fixture(params=[isa for isa in ("amx_bf16", "avx512_bf16")
                        if linear.supported() and isa in linear._C.supported_linear_isas()])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """The variants with a Q4_1 kernel: each gives its own bf16 kernel's bits."""
    default = linear._C.linear_isa()
    linear._C.set_linear_isa(request.param)
    try:
        yield request.param
    finally:
        linear._C.set_linear_isa(default)


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_q4_1_form_gives_the_bf16_kernels_bits(n: int, k: int, out_dtype: torch.dtype, threads: int, isa: str) -> None:
    gen = torch.Generator().manual_seed(n * 7919 + k)
    blocks = random_blocks(n, k, gen)
    weight = dequantized(blocks, n, k)
    both, bf16_only = linear.pack(weight, blocks), linear.pack(weight)
    assert both.q4_1 is not None and both.q4_1.numel() == -(-n // 32) * (k // 32) * 640  # 0.625 bytes a weight
    for m in range(1, MAX_ROWS + 2):  # the last one past the Q4_1 form's rows: the bf16 form's
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        got = linear.linear(x, both, out_dtype)
        assert torch.equal(got, linear.linear(x, bf16_only, out_dtype)), (m, n, k)
        torch.testing.assert_close(got.float(), linear.reference(x, weight, out_dtype).float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("n,k", [(40, 64), (577, 576)])
def test_q4_1_form_adds_a_bias_as_the_bf16_form(n: int, k: int, isa: str) -> None:
    gen = torch.Generator().manual_seed(n + k)
    blocks = random_blocks(n, k, gen)
    weight = dequantized(blocks, n, k)
    both, bf16_only = linear.pack(weight, blocks), linear.pack(weight)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    for m in range(1, MAX_ROWS + 1):
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        for out_dtype in (torch.bfloat16, torch.float32):
            assert torch.equal(linear.linear(x, both, out_dtype, bias), linear.linear(x, bf16_only, out_dtype, bias))


def packed_pair(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, linear.PackedLinearWeight]:
    """A random Q4_1 weight: its bf16 form and both forms packed."""
    blocks = random_blocks(n, k, gen)
    weight = dequantized(blocks, n, k)
    return weight, linear.pack(weight, blocks)


def test_strided_rows(isa: str) -> None:
    gen = torch.Generator().manual_seed(3)
    n, k = 72, 96
    weight, packed = packed_pair(n, k, gen)
    wide = torch.randn(3, 2 * k, generator=gen).to(torch.bfloat16)
    x = wide[:, :k]  # rows 2k apart
    got = linear.linear(x, packed)
    assert got.shape == (3, n)
    assert torch.equal(got, linear.linear(x.contiguous(), linear.pack(weight)))


def test_other_variants_ignore_the_q4_1_form() -> None:
    gen = torch.Generator().manual_seed(5)
    weight, packed = packed_pair(64, 64, gen)
    x = torch.randn(1, 64, generator=gen).to(torch.bfloat16)
    default = linear._C.linear_isa()
    try:
        linear._C.set_linear_isa("avx512")
        assert not linear.q4_1_supported()
        torch.testing.assert_close(linear.linear(x, packed).float(), linear.reference(x, weight).float(),
                                   rtol=1e-2, atol=1e-2)
    finally:
        linear._C.set_linear_isa(default)
    assert linear.q4_1_supported()


@pytest.mark.parametrize("bad", ["k", "shape", "dtype"])
def test_bad_blocks_are_refused(bad: str) -> None:
    n, k = 32, 64 if bad != "k" else 48
    weight = torch.zeros(n, k, dtype=torch.bfloat16)
    blocks = torch.zeros(n, k // 32 * 20 + (4 if bad == "shape" else 0),
                         dtype=torch.int8 if bad == "dtype" else torch.uint8)
    with pytest.raises(ValueError, match="Q4_1 blocks"):
        linear.pack(weight, blocks)


def test_loader_blocks_dequantize_to_the_loaded_weights(smollm2_gguf: str) -> None:
    _, weights, _ = load_gguf(smollm2_gguf, torch.bfloat16, keep_q4_1=True)
    kept = sorted(name for name in weights if name.endswith(Q4_1_SUFFIX))
    assert len(kept) == 30 * 7  # q, k, v, o, gate, up, down of each layer; token_embd is Q8_0
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        full = f"model.layers.7.self_attn.{name}.weight"
        n, k = weights[full].shape
        assert torch.equal(dequantized(weights[full + Q4_1_SUFFIX], n, k), weights[full]), name
    full = "model.layers.29.mlp.down_proj.weight"
    assert torch.equal(dequantized(weights[full + Q4_1_SUFFIX], *weights[full].shape), weights[full])
    _, plain, _ = load_gguf(smollm2_gguf, torch.bfloat16)
    assert not any(name.endswith(Q4_1_SUFFIX) for name in plain)


def test_engine_tokens_do_not_change_with_the_q4_1_form() -> None:
    prompts = ["Name three colours.", "What is 17 times 23?", "Write a haiku about rain."]
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    outputs = {}
    for quantized in (True, False):
        llm = LLM("smollm2:135m", dtype=torch.bfloat16, kv_cache_bytes=32 * 2**20, quantized_decode=quantized)
        down = llm.engine.runner.model.layers[0].mlp.down_proj.packed
        assert (down.q4_1 is not None) == quantized
        ids = [llm.tokenizer.encode(llm.tokenizer.apply_chat_template([{"role": "user", "content": p}]),
                                    add_special_tokens=False) for p in prompts]
        # Three at once (decode steps of 3 rows), then one alone (1 row).
        outputs[quantized] = [o.outputs[0].token_ids for o in llm.generate(ids, greedy)]
        outputs[quantized].append(llm.generate(ids[:1], greedy)[0].outputs[0].token_ids)
    assert outputs[True] == outputs[False]
