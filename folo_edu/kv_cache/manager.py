"""KVCacheManager: which physical blocks hold each request's K/V.

One rule covers both cache layouts. A request holding n tokens needs
ceil(n / tokens_per_block) blocks; blocks are given out only as tokens arrive.
  paged        tokens_per_block = block_size (16): memory grows with the sequence
  contiguous   tokens_per_block = max_model_len: each request reserves one block
               big enough for the longest possible sequence, the way systems before
               vLLM did, and wastes what it never fills.

With prefix caching (M6), every full block a request computes is cached under the hash
of its whole prefix, and a new request starts with the longest run of cached blocks
that matches its tokens: it shares those blocks (reference counts) and computes only
the rest. A shared block is never written: a request writes only at positions past its
cache hit, which lie in blocks of its own.
"""
from __future__ import annotations

from folo_edu.kv_cache.block_pool import BlockPool
from folo_edu.kv_cache.prefix_hash import block_hashes, hash_block
from folo_edu.kv_cache.slots import slot_mapping


class KVCacheManager:
    def __init__(self, num_blocks: int, tokens_per_block: int,
                 enable_prefix_caching: bool = False, hash_fn=hash_block):
        self.block_size = tokens_per_block
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[str, list[int]] = {}
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn  # a parameter so a test can force collisions
        self._hashes: dict[str, list[bytes]] = {}  # request id -> its full blocks' hashes
        self._num_cached_blocks: dict[str, int] = {}  # request id -> blocks registered
        self.prefix_cache_queries = 0  # tokens of admitted requests looked up
        self.prefix_cache_hits = 0  # of those, tokens found in the cache

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- the prefix cache ---------------------------------------------------------------
    def find_cached_prefix(self, request) -> list[int]:
        """The longest run of cached blocks that holds the request's first tokens.

        At most num_tokens - 1 tokens: the last token must be computed to get logits.
        Touches nothing; ``allocate_slots(request, n, cached_blocks)`` takes them.
        """
        if not self.enable_prefix_caching:
            return []
        tokens = request.all_token_ids
        hashes = self._block_hashes(request)
        hit: list[int] = []
        for i in range((len(tokens) - 1) // self.block_size):
            block = self.pool.lookup(hashes[i], hit[-1] if hit else None,
                                     tokens[i * self.block_size:(i + 1) * self.block_size])
            if block is None:
                break
            hit.append(block)
        return hit

    def _block_hashes(self, request) -> list[bytes]:
        known = self._hashes.setdefault(request.request_id, [])
        return block_hashes(request.all_token_ids, self.block_size, known, hash_fn=self.hash_fn)

    def cache_full_blocks(self, request, num_tokens: int) -> None:
        """Register the request's blocks that are full once its first ``num_tokens``
        tokens are computed."""
        table = self.block_tables.get(request.request_id, [])
        done = self._num_cached_blocks.get(request.request_id, 0)
        full = min(num_tokens // self.block_size, len(table))
        if full <= done:
            return
        hashes, tokens, bs = self._block_hashes(request), request.all_token_ids, self.block_size
        for i in range(done, full):
            self.pool.cache(table[i], hashes[i], table[i - 1] if i else None,
                            tokens[i * bs:(i + 1) * bs])
        self._num_cached_blocks[request.request_id] = full

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; False (nothing done) while any block is in use."""
        return self.pool.reset_prefix_cache()

    # ---- allocation -------------------------------------------------------------------
    def allocate_slots(self, request, num_new_tokens: int,
                       cached_blocks: list[int] | None = None) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``request``.

        ``cached_blocks`` (a waiting request's prefix-cache hit) start its block table;
        the caller sets num_computed_tokens past them. Returns False, changing nothing,
        when the pool has too few free blocks; the scheduler then preempts or waits.
        """
        cached = cached_blocks or []
        table = self.block_tables.get(request.request_id, [])
        assert not (cached and table), "cached blocks are only for a request with no blocks"
        computed = len(cached) * self.block_size if cached else request.num_computed_tokens
        extra = self.blocks_needed(computed + num_new_tokens) - len(table) - len(cached)
        # A hit on a block nobody uses takes it out of the free queue too.
        idle_hits = sum(1 for b in cached if self.pool.ref_counts[b] == 0)
        if max(extra, 0) + idle_hits > self.pool.num_free_blocks:
            return False
        table = self.block_tables.setdefault(request.request_id, [])
        if self.enable_prefix_caching and not table:  # a waiting request is admitted
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += len(cached) * self.block_size
        if cached:
            self.pool.touch(cached)
            table.extend(cached)
            self._num_cached_blocks[request.request_id] = len(cached)
        if extra > 0:
            table.extend(self.pool.allocate(extra))
        # Never write a shared block: the written positions lie in blocks held only here.
        first, last = computed // self.block_size, (computed + num_new_tokens - 1) // self.block_size
        assert all(self.pool.ref_counts[b] == 1 for b in table[first:last + 1]), \
            f"request {request.request_id!r} would write a shared block"
        if self.enable_prefix_caching:
            # Cache now the blocks this step fills, as vLLM does: a request admitted later
            # in the same step may share them, because each layer writes the whole batch's
            # K/V before any attention reads it. If the step never runs for this request
            # (preempted, failed), free() forgets them again.
            self.cache_full_blocks(request, computed + num_new_tokens)
        return True

    def free(self, request) -> None:
        """Give back every block of ``request`` (finished, aborted or preempted)."""
        table = self.block_tables.pop(request.request_id, [])
        registered = self._num_cached_blocks.pop(request.request_id, 0)
        # Blocks cached for a step that never ran hold no K/V yet: forget them.
        for block in table[request.num_computed_tokens // self.block_size:registered]:
            self.pool.uncache(block)
        self._hashes.pop(request.request_id, None)  # cheap to recompute if it comes back
        # Free in reverse: the tail block joins the free queue first, so it is evicted
        # first and the prefix blocks, the ones other requests share, stay longest.
        self.pool.free(list(reversed(table)))

    def get_block_table(self, request_id: str) -> list[int]:
        return self.block_tables.get(request_id, [])

    def slot_mapping(self, request_id: str, start: int, end: int) -> list[int]:
        """Cache slots of the tokens at positions [start, end) of a request."""
        return slot_mapping(self.block_tables[request_id], self.block_size, start, end)
