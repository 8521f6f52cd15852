"""M6 bookkeeping without a model: the block pool as an LRU prefix cache, block hashes."""
from __future__ import annotations

import pytest

from folo_edu.kv_cache.block_pool import BlockPool
from folo_edu.kv_cache.prefix_hash import block_hashes, hash_block


def test_hash_chains_the_whole_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, [])
    b = block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4, [])
    assert len(a) == 2 and len(b) == 2  # full blocks only
    assert a[0] != b[0] and a[1] != b[1]  # same second block, different first: different
    assert a == block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, [])
    assert hash_block(None, [1, 2], ("lora-1",)) != hash_block(None, [1, 2])  # extra keys
    known = a[:1]
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, known) is known and known == a


def test_free_queue_is_least_recently_freed_first():
    pool = BlockPool(6)
    first = pool.allocate(3)  # 0, 1, 2
    assert first == [0, 1, 2]
    pool.free([2, 1, 0])  # a request's tail first
    assert list(pool.free_queue) == [3, 4, 5, 2, 1, 0]
    assert pool.allocate(4) == [3, 4, 5, 2]  # never-used blocks, then the freed tail


def test_a_hit_takes_a_block_out_of_the_middle_of_the_queue():
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    pool.cache(blocks[0], b"h0", None, (1, 2))
    pool.free(blocks[::-1])
    assert pool.lookup(b"h0", None, (1, 2)) == blocks[0]
    pool.touch([blocks[0]])
    assert blocks[0] not in pool.free_queue and pool.ref_counts[blocks[0]] == 1
    assert pool.num_free_blocks == 3


def test_a_reused_slot_forgets_its_content_and_its_descendants():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache(a, b"ha", None, (1,))
    pool.cache(b, b"hb", a, (2,))
    pool.free([a, b])  # the parent is freed first: it is evicted first
    [c] = pool.allocate(1)
    assert c == a
    assert pool.lookup(b"ha", None, (1,)) is None
    assert pool.lookup(b"hb", a, (2,)) is None  # unreachable child forgotten too
    assert pool.num_evictions == 2 and not pool.cached


@pytest.mark.parametrize("parent,tokens", [(None, (9,)), (7, (1,))])
def test_lookup_checks_tokens_and_parent_not_just_the_hash(parent, tokens):
    pool = BlockPool(2)
    a, _ = pool.allocate(2)
    pool.cache(a, b"same", None, (1,))
    assert pool.lookup(b"same", None, (1,)) == a
    assert pool.lookup(b"same", parent, tokens) is None  # a collision is a miss


def test_reset_is_refused_while_blocks_are_in_use():
    pool = BlockPool(3)
    a = pool.allocate(1)
    pool.cache(a[0], b"h", None, (1,))
    assert pool.reset_prefix_cache() is False and pool.cached
    pool.free(a)
    assert pool.reset_prefix_cache() is True and not pool.cached and not pool.hash_of


def test_double_free_is_caught():
    pool = BlockPool(2)
    blocks = pool.allocate(1)
    pool.free(blocks)
    with pytest.raises(AssertionError, match="freed twice"):
        pool.free(blocks)


def test_uncache_forgets_a_block_in_use_and_its_descendants():
    pool = BlockPool(3)
    a, b, _ = pool.allocate(3)
    pool.cache(a, b"ha", None, (1,))
    pool.cache(b, b"hb", a, (2,))
    pool.uncache(a)  # a step that never ran: both held no K/V
    assert not pool.cached and not pool.hash_of and pool.ref_counts[a] == 1
    assert pool.num_evictions == 0
