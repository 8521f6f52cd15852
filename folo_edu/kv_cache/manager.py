"""KVCacheManager: which physical blocks hold each request's K/V.

One rule covers both cache layouts. A request holding n tokens needs
ceil(n / tokens_per_block) blocks; blocks are given out only as tokens arrive.
  paged        tokens_per_block = block_size (16): memory grows with the sequence
  contiguous   tokens_per_block = max_model_len: each request reserves one block
               big enough for the longest possible sequence, the way systems before
               vLLM did, and wastes what it never fills.
"""
from __future__ import annotations

from folo_edu.kv_cache.block_pool import BlockPool
from folo_edu.kv_cache.slots import slot_mapping


class KVCacheManager:
    def __init__(self, num_blocks: int, tokens_per_block: int):
        self.block_size = tokens_per_block
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[str, list[int]] = {}

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate_slots(self, request, num_new_tokens: int) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``request``.

        Returns False (allocating nothing) when the pool has too few free blocks;
        the scheduler then preempts someone or waits.
        """
        table = self.block_tables.setdefault(request.request_id, [])
        total = request.num_computed_tokens + num_new_tokens
        extra = self.blocks_needed(total) - len(table)
        if extra > self.pool.num_free_blocks:
            if not table:
                del self.block_tables[request.request_id]
            return False
        if extra > 0:
            table.extend(self.pool.allocate(extra))
        return True

    def free(self, request) -> None:
        """Give back every block of ``request`` (finished, aborted or preempted)."""
        table = self.block_tables.pop(request.request_id, [])
        # Free in reverse: the tail block goes back to the queue first, so it is reused
        # first and the prefix blocks stay untouched longest (what prefix caching wants).
        self.pool.free(list(reversed(table)))

    def get_block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    def slot_mapping(self, request_id: str, start: int, end: int) -> list[int]:
        """Cache slots of the tokens at positions [start, end) of a request."""
        return slot_mapping(self.block_tables[request_id], self.block_size, start, end)
