"""BlockPool: the free list, reference counts and prefix cache of the KV cache's blocks.

A block is block_size token slots in every layer's K and V tensors. The pool hands out
block ids; it never touches the tensors themselves.

With prefix caching, a full block that was computed is *cached* under its hash (see
prefix_hash.py). When its last user frees it, it stays cached in the free queue until
its slot is needed, so a later request with the same prefix can take it back (a hit):
the free queue is the eviction order, least recently freed first. It is an ordered dict
so that a hit can take a block out of the middle in O(1).
"""
from __future__ import annotations

from collections import OrderedDict

from folo_edu.kv_cache.prefix_hash import BlockHash


class BlockPool:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # The prefix cache: hash -> block, and for each cached block what it holds.
        self.cached: dict[BlockHash, int] = {}
        self.hash_of: dict[int, BlockHash] = {}
        self.content: dict[int, tuple[int | None, tuple[int, ...]]] = {}  # (parent, tokens)
        self.children: dict[int, set[int]] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def allocate(self, n: int) -> list[int]:
        """Take n free blocks, least recently freed first, evicting their cached content."""
        assert n <= len(self.free_queue), f"asked for {n} blocks, {len(self.free_queue)} free"
        blocks = []
        for _ in range(n):
            b, _ = self.free_queue.popitem(last=False)
            assert self.ref_counts[b] == 0, f"block {b} was free but referenced"
            if b in self.hash_of:
                self._evict(b)
            self.ref_counts[b] = 1
            blocks.append(b)
        return blocks

    def touch(self, blocks: list[int]) -> None:
        """A prefix-cache hit: take one more reference to each block (out of the free queue)."""
        for b in blocks:
            if self.ref_counts[b] == 0:
                del self.free_queue[b]
            self.ref_counts[b] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; a block with none left joins the free queue
        (at its end: it is evicted last), keeping its cached content."""
        for b in blocks:
            assert self.ref_counts[b] > 0, f"block {b} freed twice"
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_queue[b] = None

    # ---- the prefix cache ---------------------------------------------------------------
    def cache(self, block: int, block_hash: BlockHash, parent: int | None, tokens) -> None:
        """Remember that ``block`` holds ``tokens`` after the prefix ending in ``parent``."""
        if block in self.hash_of or block_hash in self.cached:
            return  # already cached (or the same prefix is cached in another block)
        self.cached[block_hash] = block
        self.hash_of[block] = block_hash
        self.content[block] = (parent, tuple(tokens))
        if parent is not None:
            self.children.setdefault(parent, set()).add(block)

    def lookup(self, block_hash: BlockHash, parent: int | None, tokens) -> int | None:
        """The cached block holding ``tokens`` right after block ``parent``, or None.

        The hash finds a candidate; its own tokens and parent confirm it, so a hash
        collision is a miss, never a wrong hit.
        """
        block = self.cached.get(block_hash)
        if block is None or self.content[block] != (parent, tuple(tokens)):
            return None
        return block

    def _evict(self, block: int) -> None:
        """Forget a free block's cached content, and its cached descendants' (unreachable
        without it; they are free too, since a request holding a block holds its prefix)."""
        self.num_evictions += self._forget(block, evicting=True)

    def uncache(self, block: int) -> None:
        """Forget a block's content (and its descendants') whether or not it is in use: its
        K/V were never computed (its step did not run)."""
        if block in self.hash_of:
            self._forget(block, evicting=False)

    def _forget(self, block: int, evicting: bool) -> int:
        """Drop a block and its cached descendants from the cache; how many were dropped."""
        del self.cached[self.hash_of.pop(block)]
        parent, _ = self.content.pop(block)
        if parent is not None and parent in self.children:
            self.children[parent].discard(block)
        dropped = 1
        for child in self.children.pop(block, set()):
            assert not evicting or self.ref_counts[child] == 0, \
                f"cached block {child} in use, parent evicted"
            dropped += self._forget(child, evicting)
        return dropped

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block. Refused (False) while any block is in use, as vLLM does."""
        if len(self.free_queue) != self.num_blocks:
            return False
        for block in list(self.hash_of):
            self.uncache(block)
        return True
