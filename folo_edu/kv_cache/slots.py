"""The slot-mapping formula: where in the KV cache a token's K and V live.

The cache is a flat array of slots, ``block_size`` per block. A request's block table
lists its blocks in order, so the token at position ``p`` lives in block
``table[p // block_size]`` at offset ``p % block_size``. The engine, the notebooks and
the labs all use these two functions, so there is one formula to read.
"""
from __future__ import annotations


def slot_of(block_table: list[int], block_size: int, position: int) -> int:
    """The flat cache slot of the token at ``position``."""
    if not 0 <= position < len(block_table) * block_size:
        raise ValueError(f"position={position}: expected 0 <= position < "
                         f"{len(block_table) * block_size} (the table holds "
                         f"{len(block_table)} blocks of {block_size})")
    return block_table[position // block_size] * block_size + position % block_size


def slot_mapping(block_table: list[int], block_size: int, start: int, end: int) -> list[int]:
    """Slots of the tokens at positions ``[start, end)``."""
    return [slot_of(block_table, block_size, p) for p in range(start, end)]
