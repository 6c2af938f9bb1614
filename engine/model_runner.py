"""Runs one scheduled batch: builds the flattened inputs and attention metadata, runs the model,
and samples the sequences whose computed tokens reach their last token.

On CUDA (all inactive on CPU): inputs travel from pinned host tensors with non-blocking copies, so
the step's only device-to-host sync is the caller reading the sampled tokens; the KV cache can be
sized from the memory left after a profiling forward pass (EngineConfig.gpu_memory_utilization);
decode batches replay CUDA graphs (engine/cuda_graphs.py) unless LLMAAS_CUDA_GRAPHS=0.
"""
from __future__ import annotations

import os

import torch

from engine.config import EngineConfig, ModelConfig
from engine.cuda_graphs import DecodeGraphs, capture_sizes
from engine.forward_context import AttentionMetadata, forward_context
from engine.kernels import gpu_ops, moe, ops, weight_arena
from engine.memory import release_free_heap
from engine.models.registry import model_class
from engine.pooling import pool
from engine.sampler import SamplerOutput, SamplingBatch, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence

GRAPHS_ENV = "LLMAAS_CUDA_GRAPHS"
# Decode graphs plan their attention grid for contexts up to this bound; longer ones run eagerly
# (a bound of max_model_len, 128k for Llama 3.1, would launch mostly empty split-K programs).
GRAPH_MAX_CONTEXT = 8192
GRAPH_RESERVE_BYTES = 512 * 1024 * 1024  # graphs' memory pool and allocator slack, kept out of the KV cache


class ModelRunner:
    def __init__(self, model_config: ModelConfig, weights: dict[str, torch.Tensor], engine_config: EngineConfig) -> None:
        """Consumes `weights`: each tensor leaves the dict as it is placed in the model."""
        self.model_config = model_config
        self.engine_config = engine_config
        self.block_size = engine_config.block_size
        self.device = torch.device(engine_config.device)
        self.dtype = engine_config.dtype
        self.cuda = self.device.type == "cuda"
        if engine_config.num_threads:
            torch.set_num_threads(engine_config.num_threads)
        if self.device.type == "cpu":
            ops.select_cpu_attention()
        self.embeds = engine_config.task == "embed"
        with torch.device("meta"):  # no allocation or random init: load_weights places every tensor
            model = model_class(model_config)(model_config, lm_head=not self.embeds)
        model.load_weights(weights, self.dtype, self.device)
        release_free_heap()  # the unpacked and pre-fusion copies, freed but held by malloc, before the KV cache
        self.model = model.eval()
        kv_bytes = engine_config.kv_cache_bytes
        if self.cuda and engine_config.gpu_memory_utilization is not None:
            kv_bytes = self._profiled_kv_bytes(engine_config.gpu_memory_utilization)
        self.num_blocks = kv_bytes // self.bytes_per_block()
        if self.num_blocks < 1:
            raise ValueError(f"kv_cache_bytes={kv_bytes} holds no block of {self.bytes_per_block()} bytes")
        self.kv_cache = self._allocate_kv_cache(self.num_blocks)
        self.max_model_len = min(engine_config.max_model_len or model_config.max_position_embeddings,
                                 self.num_blocks * self.block_size)
        self.graphs: DecodeGraphs | None = None
        # Graphs serve decode steps, which an embedding engine never runs. A mixture of experts is capturable
        # only through the fused Triton kernel; without it each expert runs over the rows routed to it,
        # counted on the host (engine/kernels/moe.py), which a graph cannot hold.
        if (self.cuda and not self.embeds and (not model_config.num_experts or moe.fused_runs(self.device))
                and os.environ.get(GRAPHS_ENV, "1") != "0" and self._graph_safe_backend()):
            self.graphs = self._capture_graphs()

    def bytes_per_block(self) -> int:
        c = self.model_config
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.dtype.itemsize

    def _allocate_kv_cache(self, num_blocks: int) -> torch.Tensor:
        """(2, num_layers, num_blocks, block_size, num_kv_heads, head_dim): K then V for every layer,
        bound to the attention layers."""
        c = self.model_config
        shape = (2, c.num_layers, num_blocks, self.block_size, c.num_kv_heads, c.head_dim)
        if not self.model.attention_layers():  # an encoder's: blocks are counted, never read
            return torch.empty(shape, dtype=self.dtype, device="meta")
        if self.device.type == "cpu":
            # In 2 MB pages: attention reads a few KB per block from blocks all over the cache, and
            # in 4 KB pages nearly every block read was a TLB miss and a page walk.
            cache = weight_arena.empty(shape, self.dtype).zero_()
        else:
            cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = cache[0, i], cache[1, i]
        return cache

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[Sequence], SamplerOutput | None]:
        """Runs the batch; returns the sequences that sample this step and their sampled tokens."""
        hidden, sample_rows, sample_seqs = self._replay_decode(batch) if self._graphable(batch) else (None, None, [])
        if hidden is None:
            input_ids, positions, metadata, sample_rows, sample_seqs = self._prepare(batch)
            with forward_context(metadata):
                hidden = self.model(input_ids, positions)
        if not sample_seqs:
            return [], None
        assert sample_rows is not None
        logits = self.model.compute_logits(hidden[sample_rows])
        sampling = SamplingBatch.from_seqs(sample_seqs, self.model_config.vocab_size, self.device)
        return sample_seqs, sample(logits, sampling)

    @torch.inference_mode()
    def execute_pooling(self, batch: ScheduledBatch, pooling: str) -> list[tuple[Sequence, torch.Tensor]]:
        """An embedding engine's step: runs the batch's prompt chunks; returns each sequence whose
        prompt it completes, with its unit vector (see engine/pooling.py)."""
        input_ids, positions, metadata, _, _ = self._prepare(batch)
        with forward_context(metadata):
            hidden = self.model(input_ids, positions)  # (T, hidden_size)
        return pool(hidden, batch, pooling)

    def _h2d(self, values: list[int], dtype: torch.dtype) -> torch.Tensor:
        """A host list on the device: through pinned memory and a non-blocking copy on CUDA (torch's
        caching host allocator keeps the pinned block alive until the copy is done)."""
        if not self.cuda:
            return torch.tensor(values, dtype=dtype)
        return torch.tensor(values, dtype=dtype, pin_memory=True).to(self.device, non_blocking=True)

    def _prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata,
                                                        torch.Tensor, list[Sequence]]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        context_lens: list[int] = []
        query_start_loc = [0]
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            context_lens.append(end)
            query_start_loc.append(query_start_loc[-1] + n)
            if end == seq.num_tokens:
                sample_rows.append(query_start_loc[-1] - 1)
                sample_seqs.append(seq)
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        # Rows padded with block 0: the kernels read no further than each context length.
        tables = [x for seq in batch.seqs for x in seq.block_table + [0] * (max_blocks - len(seq.block_table))]
        metadata = AttentionMetadata(
            slot_mapping=self._h2d(slot_mapping, torch.int64),
            block_tables=self._h2d(tables, torch.int32).view(len(batch.seqs), max_blocks),
            context_lens=self._h2d(context_lens, torch.int32),
            query_start_loc=self._h2d(query_start_loc, torch.int32),
            max_query_len=max(batch.num_new_tokens),
            max_context_len=max(context_lens),
        )
        return (self._h2d(input_ids, torch.int64), self._h2d(positions, torch.int64), metadata,
                self._h2d(sample_rows, torch.int64), sample_seqs)

    # ---- CUDA graphs (decode) ------------------------------------------------------------
    def _graph_safe_backend(self) -> bool:
        """Graph padding rows write slot -1, which only the Triton and CUDA cache writes skip."""
        return gpu_ops.backend(os.environ.get(ops.BACKEND_ENV) or None) != "torch"

    def _capture_graphs(self) -> DecodeGraphs:
        width = -(-self.max_model_len // self.block_size)
        return DecodeGraphs.capture(self.model, capture_sizes(self.engine_config.max_num_seqs), width,
                                    min(self.max_model_len, GRAPH_MAX_CONTEXT), self.device)

    def _graphable(self, batch: ScheduledBatch) -> bool:
        if self.graphs is None or any(n != 1 for n in batch.num_new_tokens):
            return False
        return self.graphs.fits(len(batch.seqs), max(s.num_computed_tokens + 1 for s in batch.seqs),
                                max(len(s.block_table) for s in batch.seqs))

    def _replay_decode(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, list[Sequence]]:
        assert self.graphs is not None
        bs = self.block_size
        seqs = batch.seqs
        positions = [s.num_computed_tokens for s in seqs]
        width = max(len(s.block_table) for s in seqs)

        def pinned(values: list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, pin_memory=True)

        hidden = self.graphs.replay(
            pinned([s.token_ids[p] for s, p in zip(seqs, positions)], torch.int64),
            pinned(positions, torch.int64),
            pinned([s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)], torch.int64),
            pinned([x for s in seqs for x in s.block_table + [0] * (width - len(s.block_table))],
                   torch.int32).view(len(seqs), width),
            pinned([p + 1 for p in positions], torch.int32),
        )
        rows = [i for i, (s, p) in enumerate(zip(seqs, positions)) if p + 1 == s.num_tokens]
        return hidden, self._h2d(rows, torch.int64), [seqs[i] for i in rows]

    # ---- KV cache sizing -----------------------------------------------------------------
    def _profiled_kv_bytes(self, utilization: float) -> int:
        """GPU memory for the KV cache: utilization x total, less what other processes hold, the
        peak of a forward pass at the largest batch (weights + activations + logits), and a
        reserve for the graphs. The profiling pass runs over a cache just big enough for it."""
        if not 0.0 < utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization={utilization} must be in (0, 1]")
        cfg = self.engine_config
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        others = total - free - torch.cuda.memory_reserved(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        max_len = cfg.max_model_len or self.model_config.max_position_embeddings
        tokens = cfg.max_num_batched_tokens
        seq_lens = [min(max_len, tokens - i) for i in range(0, tokens, max_len)]
        blocks = sum(-(-n // self.block_size) for n in seq_lens)
        self.kv_cache = self._allocate_kv_cache(blocks)
        self._profile_forward(seq_lens, min(cfg.max_num_seqs, tokens))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - self.kv_cache.numel() * self.kv_cache.element_size()
        del self.kv_cache
        torch.cuda.empty_cache()
        return max(0, int(utilization * total) - others - peak - GRAPH_RESERVE_BYTES)

    @torch.inference_mode()
    def _profile_forward(self, seq_lens: list[int], num_logit_rows: int) -> None:
        bs = self.block_size
        dev = self.device
        starts, tables, block = [0], [], 0
        for n in seq_lens:
            starts.append(starts[-1] + n)
            tables.append(list(range(block, block + -(-n // bs))))
            block += len(tables[-1])
        width = max(len(t) for t in tables)
        slots = [t[p // bs] * bs + p % bs for t, n in zip(tables, seq_lens) for p in range(n)]
        metadata = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=dev),
            context_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            max_query_len=max(seq_lens), max_context_len=max(seq_lens))
        positions = torch.cat([torch.arange(n, device=dev) for n in seq_lens])
        input_ids = torch.zeros(starts[-1], dtype=torch.int64, device=dev)
        with forward_context(metadata):
            hidden = self.model(input_ids, positions)
        if not self.embeds:
            self.model.compute_logits(hidden[:num_logit_rows]).float().softmax(-1)  # the sampler's fp32 copy
