"""Paged KV-cache bookkeeping: reference-counted blocks, prefix caching by chained block hashes,
and an O(1) LRU of free blocks.

A block is free when no sequence holds it (ref_count == 0). A free block may still carry a hash:
its contents stay reusable by the prefix cache until the allocator hands it out again. Free blocks
sit in one ordered dict used as a queue: allocation pops the head, so blocks without contents go
to the head when freed and cached blocks to the tail (least recently used evicted first).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()  # the tokens a cached block holds, to confirm a hash hit


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached_blocks: dict[int, int] = {}  # block hash -> block id
        # Prefix-cache lookups, in tokens, for the hit rate (engine.stats reads them).
        self.num_prefix_query_tokens = 0
        self.num_prefix_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of seq's tokens, leaving at least one token to compute
        (the model needs a last position to produce logits from)."""
        if not self.enable_prefix_caching:
            return []
        self._hash_full_blocks(seq)
        hits: list[int] = []
        bs = self.block_size
        for i in range((seq.num_tokens - 1) // bs):
            block_id = self.cached_blocks.get(seq.block_hashes[i])
            if block_id is None or self.blocks[block_id].token_ids != tuple(seq.token_ids[i * bs:(i + 1) * bs]):
                break
            hits.append(block_id)
        self.num_prefix_query_tokens += seq.num_tokens
        self.num_prefix_hit_tokens += len(hits) * bs
        return hits

    def allocate(self, seq: Sequence, num_new_tokens: int, prefix_hits: list[int] | None = None) -> bool:
        """Grow seq's block table to hold its computed tokens plus num_new_tokens; on admission,
        prefix_hits (from match_prefix) are attached first. False, changing nothing, if blocks are short."""
        hits = prefix_hits or []
        num_tokens = seq.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_for(num_tokens) - len(seq.block_table) - len(hits)
        num_hits_in_free = sum(1 for b in hits if b in self.free_blocks)
        if num_new_blocks > self.num_free_blocks - num_hits_in_free:
            return False
        for block_id in hits:
            self.blocks[block_id].ref_count += 1
            self.free_blocks.pop(block_id, None)
        seq.block_table.extend(hits)
        seq.num_cached_blocks += len(hits)
        for _ in range(max(num_new_blocks, 0)):
            seq.block_table.append(self._pop_free_block())
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register seq's newly computed full blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        self._hash_full_blocks(seq)
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        bs = self.block_size
        for i in range(seq.num_cached_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            block_hash = seq.block_hashes[i]
            if block.block_hash is None and block_hash not in self.cached_blocks:
                block.block_hash = block_hash
                block.token_ids = tuple(seq.token_ids[i * bs:(i + 1) * bs])
                self.cached_blocks[block_hash] = block.block_id
        seq.num_cached_blocks = max(seq.num_cached_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks. Tail blocks are freed first so that, among cached blocks, a prompt's
        later blocks are evicted before its first ones (the first ones are the most shared)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} freed twice"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
                if block.block_hash is None:
                    self.free_blocks.move_to_end(block_id, last=False)
        seq.block_table.clear()
        seq.num_cached_blocks = 0

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _pop_free_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        assert block.ref_count == 0
        if block.block_hash is not None:
            if self.cached_blocks.get(block.block_hash) == block_id:
                del self.cached_blocks[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    def _hash_full_blocks(self, seq: Sequence) -> None:
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_tokens // bs):
            parent = seq.block_hashes[i - 1] if i else 0
            seq.block_hashes.append(_block_hash(parent, seq.token_ids[i * bs:(i + 1) * bs]))


def _block_hash(parent: int, token_ids: list[int]) -> int:
    """A block's hash, chained to its parent's. Cryptographic, because a hit confirms only the block's
    own tokens: Python's hash() of int tuples is the same in every process and easy to collide (ints
    hash modulo 2**61 - 1), so a crafted prompt could register a block under another prefix's hash."""
    data = parent.to_bytes(16, "little") + array("q", token_ids).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "little")
