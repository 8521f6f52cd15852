"""BlockPool: the free list and reference counts of the KV cache's physical blocks.

A block is block_size token slots in every layer's K and V tensors. The pool hands
out block ids; it never touches the tensors themselves.
"""
from __future__ import annotations

from collections import deque


class BlockPool:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free_queue: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def allocate(self, n: int) -> list[int]:
        """Take n free blocks (the caller has checked there are enough)."""
        assert n <= len(self.free_queue), f"asked for {n} blocks, {len(self.free_queue)} free"
        blocks = [self.free_queue.popleft() for _ in range(n)]
        for b in blocks:
            assert self.ref_counts[b] == 0, f"block {b} was free but referenced"
            self.ref_counts[b] = 1
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; a block with none left is free again."""
        for b in blocks:
            assert self.ref_counts[b] > 0, f"block {b} freed twice"
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_queue.append(b)
