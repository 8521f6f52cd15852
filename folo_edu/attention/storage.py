"""The KV cache tensors themselves: per layer, K and V of [blocks, block_size, KVH, D]."""
from __future__ import annotations

import torch


def allocate_kv_cache(num_layers: int, num_blocks: int, tokens_per_block: int,
                      num_kv_heads: int, head_dim: int, dtype, device) -> torch.Tensor:
    """One tensor [2, layers, blocks, tokens_per_block, KVH, D]: index [0] is K, [1] is V."""
    return torch.zeros(2, num_layers, num_blocks, tokens_per_block, num_kv_heads, head_dim,
                       dtype=dtype, device=device)
