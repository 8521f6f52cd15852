"""Checks for notebooks/05_paged_kv_cache.ipynb (milestone M3).

The exercises: how many blocks a request needs, which cache slot a token lands
in (the slot-mapping formula), and how many requests fit a pool of blocks. The
references are folo_edu.viz.paged.blocks_needed and folo_edu.kv_cache.slots.slot_of,
the slot formula the engine itself uses.
"""
from __future__ import annotations

from folo_edu.labs import hint, not_answered, report_pass, require_number
from folo_edu.kv_cache.slots import slot_of
from folo_edu.viz.paged import blocks_needed

# Exercise 1: a request with a 37-token prompt that has generated 20 tokens, blocks of 16.
EXERCISE_NUM_TOKENS = 57
EXERCISE_BLOCK_SIZE = 16
# Exercise 2: the slot of position 19 for block table [6, 1, 9, 4], blocks of 8 tokens.
EXERCISE_BLOCK_TABLE = (6, 1, 9, 4)
EXERCISE_SLOT_BLOCK_SIZE = 8
EXERCISE_POSITION = 19
# Exercise 3: a pool of 64 blocks of 16 tokens; every request will reach 100 tokens.
EXERCISE_POOL_BLOCKS = 64
EXERCISE_TOKENS_PER_REQUEST = 100


def check_blocks_needed(answer, num_tokens: int = EXERCISE_NUM_TOKENS,
                        block_size: int = EXERCISE_BLOCK_SIZE) -> bool:
    """Check the number of KV blocks a request holding ``num_tokens`` tokens needs."""
    what = f"blocks for {num_tokens} tokens in blocks of {block_size}"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = blocks_needed(num_tokens, block_size)
    if answer == expected:
        waste = expected * block_size - num_tokens
        return report_pass(f"{what} = {expected} ({waste} empty slots in the last block)")
    hints = [
        (num_tokens // block_size, "rounded down: the tokens past the last full block "
                                   "still need a block of their own"),
        (num_tokens / block_size, "a block is all or nothing: round up to a whole number"),
        (expected + 1, "one block too many: the last block may be partly empty, "
                       "but it need not be full"),
        (num_tokens, "that is tokens, not blocks"),
    ]
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "divide the tokens by the block size and round up"))


def check_slot(answer, block_table=EXERCISE_BLOCK_TABLE,
               block_size: int = EXERCISE_SLOT_BLOCK_SIZE,
               position: int = EXERCISE_POSITION) -> bool:
    """Check the cache slot of the token at ``position`` of a request."""
    table = list(block_table)
    what = f"the slot of position {position} (block table {table}, block size {block_size})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = slot_of(table, block_size, position)
    if answer == expected:
        return report_pass(f"{what} = {table[position // block_size]} x {block_size} + "
                           f"{position % block_size} = {expected}")
    j, off = position // block_size, position % block_size
    hints = [
        (position, "that is the logical position: look its block up in the block table"),
        (table[j], "that is the physical block id; a slot counts tokens, so multiply by the "
                   "block size and add the offset"),
        (table[j] * block_size, "that is the block's first slot: add the offset "
                                "position % block_size"),
        (off, "that is only the offset within the block"),
    ]
    if j >= 1:
        hints.append((table[j - 1] * block_size + off, "off by one block: logical block "
                                                       "numbers start at 0"))
    if j + 1 < len(table):
        hints.append((table[j + 1] * block_size + off, "off by one block: logical block "
                                                       "numbers start at 0"))
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "slot = block_table[position // block_size] * block_size "
                       "+ position % block_size"))


def check_requests_that_fit(answer, pool_blocks: int = EXERCISE_POOL_BLOCKS,
                            block_size: int = EXERCISE_BLOCK_SIZE,
                            tokens_per_request: int = EXERCISE_TOKENS_PER_REQUEST) -> bool:
    """Check how many requests of ``tokens_per_request`` tokens can all run to the end at
    once in a paged pool of ``pool_blocks`` blocks."""
    what = (f"requests of {tokens_per_request} tokens that fit {pool_blocks} blocks of "
            f"{block_size}")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    per = blocks_needed(tokens_per_request, block_size)
    expected = pool_blocks // per
    if answer == expected:
        return report_pass(f"{what} = {pool_blocks} // {per} = {expected}")
    slots = pool_blocks * block_size
    hints = [
        (slots // tokens_per_request, "that counts tokens as if they shared blocks: each "
                                      "request has its own partly empty last block"),
        (pool_blocks // max(1, tokens_per_request // block_size),
         "rounded the blocks per request down: round them up"),
        (pool_blocks / per, "a request cannot run with part of its blocks: round down"),
    ]
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "blocks per request = ceil(tokens / block size); then divide the "
                       "pool by it and round down"))
