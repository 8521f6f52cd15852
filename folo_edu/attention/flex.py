"""Decode attention through torch's FlexAttention, reading the paged cache in place.

The whole physical cache is the key sequence: [1, KVH, num_blocks * block_size, D],
broadcast (no copy) to every decode row. A BlockMask says which KV blocks each row
may visit, built straight from the block tables (``BlockMask.from_kv_blocks``), so a
compiled kernel touches only the blocks a sequence owns. Inside those blocks the
mask_mod hides the slots past the sequence's length. Prefills go through SDPA.

Uncompiled, FlexAttention falls back to a dense reference that scores every slot of
the cache: correct, and fine for tests with a small cache, but slow. The backend
compiles it on CUDA, or on CPU when the engine is built with torch_compile=True.
"""
from __future__ import annotations

import warnings

import torch

from folo_edu.attention.common import AttentionBackend
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.sdpa import sdpa_prefills


def flex_unavailable_reason() -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as e:  # torch < 2.5
        return f"FlexAttention needs torch >= 2.5 ({e})"
    return None


def decode_block_mask(block_tables, seq_lens, num_blocks: int, block_size: int):
    """A BlockMask for B decode rows (one query each) over all num_blocks cache blocks.

    Row b may visit exactly the blocks in block_tables[b] that hold its seq_lens[b]
    tokens; within them, slot s is visible if its logical position is < seq_lens[b].
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, width = block_tables.shape
    device = block_tables.device
    seq_lens = seq_lens.to(torch.long)
    num_used = (seq_lens + block_size - 1) // block_size                   # [B]
    used = torch.arange(width, device=device)[None, :] < num_used[:, None]   # [B, W]
    # Which row owns each physical block, and at which logical index it sits.
    owner = torch.full((num_blocks,), -1, dtype=torch.long, device=device)
    logical = torch.zeros(num_blocks, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)[:, None].expand(B, width)
    cols = torch.arange(width, device=device)[None, :].expand(B, width)
    owner[block_tables[used]] = rows[used]
    logical[block_tables[used]] = cols[used]

    def mask_mod(b, h, q_idx, kv_idx):
        block = kv_idx // block_size
        position = logical[block] * block_size + kv_idx % block_size
        return (owner[block] == b) & (position < seq_lens[b])

    # kv_indices must list a row's blocks first; its last dim is the number of KV blocks.
    kv_indices = torch.zeros(B, 1, 1, num_blocks, dtype=torch.int32, device=device)
    kv_indices[:, 0, 0, :width] = block_tables
    return BlockMask.from_kv_blocks(
        num_used.to(torch.int32).view(B, 1, 1), kv_indices, BLOCK_SIZE=(1, block_size),
        mask_mod=mask_mod, seq_lengths=(1, num_blocks * block_size))


class FlexBackend(AttentionBackend):
    name = "flex"

    def __init__(self, compile: bool = False):
        from torch.nn.attention.flex_attention import flex_attention

        self.compiled = compile
        self._attend = torch.compile(flex_attention) if compile else flex_attention

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            num_blocks, block_size = k_cache.shape[:2]
            mask = meta.per_step.get("flex_block_mask")
            if mask is None:  # built once per step, shared by every layer
                mask = meta.per_step["flex_block_mask"] = decode_block_mask(
                    meta.block_tables[:nd], meta.seq_lens_tensor[:nd], num_blocks, block_size)
            # [blocks, bs, KVH, D] -> [1, KVH, blocks * bs, D], expanded over the rows
            keys = k_cache.flatten(0, 1).permute(1, 0, 2)[None].expand(nd, -1, -1, -1)
            values = v_cache.flatten(0, 1).permute(1, 0, 2)[None].expand(nd, -1, -1, -1)
            with warnings.catch_warnings():
                # Uncompiled on purpose (see the module docstring): no need to say so per call.
                warnings.filterwarnings("ignore", message=".*without torch.compile")
                o = self._attend(q[:nd, :, None], keys, values, block_mask=mask, scale=scale,
                                 enable_gqa=True)
            out[:nd] = o[:, :, 0]
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
