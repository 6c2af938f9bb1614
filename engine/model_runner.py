"""Runs one scheduled batch: builds the flattened inputs and attention metadata, runs the model,
and samples the sequences whose computed tokens reach their last token."""
from __future__ import annotations

import torch

from engine.config import EngineConfig, ModelConfig
from engine.forward_context import AttentionMetadata, forward_context
from engine.models.registry import model_class
from engine.sampler import SamplerOutput, SamplingBatch, sample
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model_config: ModelConfig, weights: dict[str, torch.Tensor], engine_config: EngineConfig) -> None:
        """Consumes `weights`: each tensor leaves the dict as it is placed in the model."""
        self.model_config = model_config
        self.block_size = engine_config.block_size
        self.device = torch.device(engine_config.device)
        self.dtype = engine_config.dtype
        if engine_config.num_threads:
            torch.set_num_threads(engine_config.num_threads)
        with torch.device("meta"):  # no allocation or random init: load_weights places every tensor
            model = model_class(model_config)(model_config)
        model.load_weights(weights, self.dtype, self.device)
        self.model = model.eval()
        self.num_blocks = engine_config.kv_cache_bytes // self.bytes_per_block()
        if self.num_blocks < 1:
            raise ValueError(f"kv_cache_bytes={engine_config.kv_cache_bytes} holds no block of {self.bytes_per_block()} bytes")
        c = model_config
        # (2, num_layers, num_blocks, block_size, num_kv_heads, head_dim): K then V for every layer.
        self.kv_cache = torch.zeros(2, c.num_layers, self.num_blocks, self.block_size, c.num_kv_heads, c.head_dim,
                                    dtype=self.dtype, device=self.device)
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]

    def bytes_per_block(self) -> int:
        c = self.model_config
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.dtype.itemsize

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[list[Sequence], SamplerOutput | None]:
        """Runs the batch; returns the sequences that sample this step and their sampled tokens."""
        input_ids, positions, metadata, sample_rows, sample_seqs = self._prepare(batch)
        with forward_context(metadata):
            hidden = self.model(input_ids, positions)
        if not sample_seqs:
            return [], None
        logits = self.model.compute_logits(hidden[sample_rows])
        sampling = SamplingBatch.from_seqs(sample_seqs, self.model_config.vocab_size, self.device)
        return sample_seqs, sample(logits, sampling)

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
        block_tables = torch.tensor([seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in batch.seqs],
                                    dtype=torch.int32)
        dev = self.device
        metadata = AttentionMetadata(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=dev),
            block_tables=block_tables.to(dev),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=dev),
            max_query_len=max(batch.num_new_tokens),
            max_context_len=max(context_lens),
        )
        return (torch.tensor(input_ids, dtype=torch.int64, device=dev),
                torch.tensor(positions, dtype=torch.int64, device=dev), metadata,
                torch.tensor(sample_rows, dtype=torch.int64, device=dev), sample_seqs)
