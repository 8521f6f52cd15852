"""Decode attention through torch's FlexAttention, reading the paged cache in place.

The whole physical cache is the key sequence: [1, KVH, num_blocks * block_size, D],
broadcast (no copy) to every decode row. A BlockMask, built once per step from the
block tables, says which KV blocks each row may visit, so a compiled kernel touches
only the blocks a sequence owns; inside its last block, mask_mod hides the slots past
the sequence's length. Prefills go through SDPA.

Uncompiled, FlexAttention falls back to a dense reference that scores every slot of
the cache: correct, and fine for tests with a small cache, but slow. The backend
compiles it on CUDA, or on CPU when the engine is built with torch_compile=True.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

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

    Row b may read slot s only if s's block is in block_tables[b] and s's logical
    position (block index in the table * block_size + offset) is < seq_lens[b].
    create_block_mask evaluates that rule once per step, notes which (row, block) pairs
    are full, partial or empty, and compiled kernels then skip the empty ones: a row
    reads only its own blocks.
    """
    from torch.nn.attention.flex_attention import create_block_mask

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
        return (owner[block] == b) & (logical[block] * block_size + kv_idx % block_size
                                      < seq_lens[b])

    # (BlockMask.from_kv_blocks could build the same mask straight from the block tables
    # without evaluating mask_mod on every slot, but torch 2.13's compiled CPU kernel
    # fails to build from such a mask: a C++ codegen error. So: create_block_mask.)
    return create_block_mask(mask_mod, B, None, 1, num_blocks * block_size, device=device,
                             BLOCK_SIZE=(1, block_size))


class FlexBackend(AttentionBackend):
    name = "flex"

    def __init__(self, compile: bool = False):
        from torch.nn.attention.flex_attention import flex_attention

        self.compiled = compile
        # Static shapes: torch 2.13's CPU kernel fails to build when the batch dimension
        # turns dynamic (a C++ codegen error), so compiled calls pad the decode rows to
        # a power of two instead, and each of those few sizes compiles once.
        self._attend = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            rows = 1 << (nd - 1).bit_length() if self.compiled else nd
            mask = meta.per_step.get("flex_block_mask")
            if mask is None:  # built once per step, shared by every layer
                tables, lens = meta.block_tables[:nd], meta.seq_lens_tensor[:nd]
                if rows > nd:  # padding rows own no block, so they see no key
                    tables = F.pad(tables, (0, 0, 0, rows - nd))
                    lens = F.pad(lens, (0, rows - nd))
                mask = meta.per_step["flex_block_mask"] = decode_block_mask(
                    tables, lens, *k_cache.shape[:2])
            queries = F.pad(q[:nd], (0, 0, 0, 0, 0, rows - nd))[:, :, None]  # [rows, H, 1, D]
            # [blocks, bs, KVH, D] -> [1, KVH, blocks * bs, D], expanded over the rows
            keys = k_cache.flatten(0, 1).permute(1, 0, 2)[None].expand(rows, -1, -1, -1)
            values = v_cache.flatten(0, 1).permute(1, 0, 2)[None].expand(rows, -1, -1, -1)
            with warnings.catch_warnings():
                # Uncompiled on purpose (see the module docstring): no need to say so per call.
                warnings.filterwarnings("ignore", message=".*without torch.compile")
                o = self._attend(queries, keys, values, block_mask=mask, scale=scale,
                                 enable_gqa=True)
            out[:nd] = o[:nd, :, 0]
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
