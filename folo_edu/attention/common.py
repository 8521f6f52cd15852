"""What the attention backends share: the backend interface and KV cache reads/writes.

The cache of one layer is two tensors, K and V, each
[num_blocks, block_size, num_kv_heads, head_dim]. A token's *slot* is
block_id * block_size + offset; the model runner computes it (slot_mapping).
"""
from __future__ import annotations

import torch


class AttentionBackend:
    """One way to compute attention over the paged KV cache.

    A backend gets the whole flat batch of one step and must return, for every query
    token, attention over its own sequence's keys (cached ones plus this step's).
    ``supports_cuda_graphs`` says whether its decode path reads only fixed-shape
    tensors (no Python lists of lengths), so a decode step can be captured once in a
    CUDA graph and replayed.
    """

    name = "?"
    supports_cuda_graphs = False

    def write_kv(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        write_kv(k_cache, v_cache, k, v, slot_mapping)

    def forward(self, q, k_cache, v_cache, meta, scale: float, k, v) -> torch.Tensor:
        """q [T, H, D] and this step's k, v [T, KVH, D] -> attention output [T, H, D]."""
        raise NotImplementedError


def write_kv(k_cache, v_cache, k, v, slot_mapping) -> None:
    """Store this step's K and V ([T, KVH, D]) at their slots in the cache."""
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """K or V of one sequence, [length, KVH, D], read through its block table.

    With one block (the contiguous cache) this is a view: no copy at all.
    """
    block_size = cache.shape[1]
    if length <= block_size:
        return cache[block_table[0], :length]
    blocks = -(-length // block_size)
    return cache[block_table[:blocks]].flatten(0, 1)[:length]


def gather_kv_batch(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int):
    """K or V of several sequences, [B, max_len, KVH, D], padded to the longest."""
    if max_len <= cache.shape[1]:
        return cache[block_tables[:, 0], :max_len]
    return cache[block_tables].flatten(1, 2)[:, :max_len]


def causal_mask(query_len: int, seq_len: int, device) -> torch.Tensor:
    """[query_len, seq_len] bool: query i (at position seq_len-query_len+i) sees keys <= it."""
    q_pos = torch.arange(seq_len - query_len, seq_len, device=device)[:, None]
    return torch.arange(seq_len, device=device)[None, :] <= q_pos
