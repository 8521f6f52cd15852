"""Block hashes for prefix caching: a full block's identity is its whole prefix.

The hash of block i chains the hash of block i-1, the block's token ids and extra keys
(room for what else changes K/V, such as a LoRA adapter). So two blocks share a hash only
if every token before and in them is the same. It is sha256 of a stable byte encoding,
as vLLM recommends when requests of different users share one cache; and a hit is still
checked against the block's own tokens and parent (BlockPool.lookup), so even a
collision could never hand a request the wrong K/V.
"""
from __future__ import annotations

import hashlib
import struct

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids, extra_keys: tuple = ()) -> BlockHash:
    """sha256 over the parent hash, the token ids (8 bytes each) and the extra keys."""
    h = hashlib.sha256()
    h.update(parent or b"\0" * 32)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if extra_keys:
        h.update(repr(extra_keys).encode())
    return h.digest()


def block_hashes(token_ids: list[int], block_size: int, known: list[BlockHash],
                 extra_keys: tuple = (), hash_fn=hash_block) -> list[BlockHash]:
    """Extend ``known`` (the hashes already computed) to every full block of token_ids."""
    for i in range(len(known), len(token_ids) // block_size):
        parent = known[i - 1] if i else None
        known.append(hash_fn(parent, token_ids[i * block_size:(i + 1) * block_size],
                             extra_keys))
    return known
