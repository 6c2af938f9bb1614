"""engine/cuda_graphs.py: captured sizes and padding (CPU), and on a GPU, a replayed decode graph
over the real cache write and attention ops matching the same step run eagerly."""
from __future__ import annotations

import pytest
import torch

from engine.cuda_graphs import DecodeGraphs, DecodeInputs, capture_sizes, padded_size
from engine.forward_context import AttentionMetadata, forward_context, get_attention_metadata
from engine.kernels import gpu_ops, ops


def test_capture_sizes_cover_every_batch_up_to_max() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    for max_num_seqs in (1, 3, 8, 20, 256):
        sizes = capture_sizes(max_num_seqs)
        for n in range(1, max_num_seqs + 1):
            padded = padded_size(sizes, n)
            assert padded is not None and n <= padded <= max(2 * n, 8)
        assert padded_size(sizes, max_num_seqs + 1) is None


def test_decode_inputs_padding_defaults() -> None:
    inputs = DecodeInputs.allocate(4, 3, torch.device("cpu"))
    meta = inputs.metadata(2, 100)
    assert meta.slot_mapping.tolist() == [-1, -1]  # unwritten rows never touch the cache
    assert meta.context_lens.tolist() == [1, 1] and meta.query_start_loc.tolist() == [0, 1, 2]
    assert meta.block_tables.shape == (2, 3) and meta.max_query_len == 1 and meta.max_context_len == 100


class _Attention(torch.nn.Module):
    """One attention layer over the paged cache: embeddings -> q, k, v -> write -> attend."""

    def __init__(self, vocab: int, heads: int, kv_heads: int, head_dim: int, num_blocks: int, block: int,
                 sliding_window: int = 0) -> None:
        super().__init__()
        self.sliding_window = sliding_window  # a per-layer constant, as a model's local layers hold it
        gen = torch.Generator().manual_seed(0)
        width = (heads + 2 * kv_heads) * head_dim
        self.embed = torch.randn(vocab, width, generator=gen).to("cuda", torch.bfloat16)
        self.shape = (heads, kv_heads, head_dim)
        self.k_cache = torch.zeros(num_blocks, block, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        self.v_cache = torch.zeros_like(self.k_cache)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        heads, kv_heads, head_dim = self.shape
        qkv = (self.embed[ids] * (1 + positions[:, None] % 3)).view(-1, heads + 2 * kv_heads, head_dim)
        q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
        m = get_attention_metadata()
        ops.write_kv_cache(k, v, self.k_cache, self.v_cache, m.slot_mapping)
        out = ops.paged_attention(q, self.k_cache, self.v_cache, m.block_tables, m.context_lens, m.query_start_loc,
                                  head_dim ** -0.5, m.max_query_len, m.max_context_len,
                                  sliding_window=self.sliding_window)
        return out.flatten(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("attention_backend", ["triton", "cuda"])
@pytest.mark.parametrize("window", [0, 20])  # 20: the graph plans from the window, eager from ctx.max()
def test_replayed_graph_matches_eager(attention_backend: str, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if attention_backend == "cuda" and gpu_ops.backend(None) == "torch":
        pytest.skip("no triton")
    from engine.kernels import cuda_kernels

    if attention_backend == "cuda" and not cuda_kernels.available():
        pytest.skip("engine._C_cuda not built")
    monkeypatch.setenv(ops.BACKEND_ENV, attention_backend)
    block, num_blocks, width = 16, 64, 8
    layer = _Attention(50, 8, 2, 64, num_blocks, block, window)
    graphs = DecodeGraphs.capture(layer, capture_sizes(8), width, width * block, torch.device("cuda"))
    rng = torch.Generator().manual_seed(1)
    n = 5  # padded to 8
    ctx = torch.randint(1, width * block, (n,), generator=rng)
    tables = torch.randperm(num_blocks, generator=rng)[:n * width].view(n, width).to(torch.int32)
    pos = ctx - 1
    slots = tables[torch.arange(n), pos // block].long() * block + pos % block
    ids = torch.randint(0, 50, (n,), generator=rng)
    layer.k_cache.normal_()
    layer.v_cache.normal_()
    k_before, v_before = layer.k_cache.clone(), layer.v_cache.clone()
    replayed = graphs.replay(ids, pos, slots, tables, ctx.to(torch.int32)).clone()
    k_graph = layer.k_cache.clone()
    layer.k_cache.copy_(k_before)
    layer.v_cache.copy_(v_before)
    meta = AttentionMetadata(slots.cuda(), tables.cuda(), ctx.to(torch.int32).cuda(),
                             torch.arange(n + 1, dtype=torch.int32, device="cuda"), 1, int(ctx.max()))
    with forward_context(meta):
        eager = layer(ids.cuda(), pos.cuda())
    torch.testing.assert_close(replayed, eager, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(k_graph, layer.k_cache, atol=0, rtol=0)  # padding rows wrote nothing
