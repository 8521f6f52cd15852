"""PagedAttention for decodes in plain PyTorch: the algorithm the Triton kernel runs.

Instead of gathering each sequence's keys into one padded tensor (what sdpa does),
it walks the key positions in tiles. For each tile it looks up every position's
physical slot through the block table, scores the tile, and folds it into a running
("online") softmax: a running max m, a running sum l, and an accumulator that is
rescaled by exp(m_old - m_new) whenever the max grows (Milakov & Gimelshein 2018,
the trick behind FlashAttention). Memory is one tile, however long the sequence.

This is the readable reference for ``triton_kernels.paged_decode_attention``: same
inputs (q, caches, block tables, seq_lens tensor), same loop, same arithmetic, but
one tile of the whole batch per Python iteration instead of one GPU program per head.
Prefills go through SDPA.
"""
from __future__ import annotations

import torch

from folo_edu.attention.common import AttentionBackend
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.sdpa import sdpa_prefills

TILE = 128  # key positions scored per iteration; independent of the cache block size


def paged_decode_torch(q, k_cache, v_cache, block_tables, seq_lens, scale: float,
                       tile: int = TILE, max_len: int | None = None) -> torch.Tensor:
    """q [B, H, D], caches [N, bs, KVH, D], block_tables [B, W], seq_lens [B] -> [B, H, D].

    A row with seq_len 0 (padding) gets zeros. max_len (the longest seq_len) sets the
    number of tiles; pass it when the host knows it, to save reading it off the device.
    """
    B, H, D = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = H // kv_heads
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    keys_flat, values_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)  # [slots, KVH, D]
    qg = q.view(B, kv_heads, group, D).to(acc_dtype)   # query heads grouped by KV head
    m = torch.full((B, kv_heads, group), float("-inf"), dtype=acc_dtype, device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(B, kv_heads, group, D, dtype=acc_dtype, device=q.device)
    seq_lens = seq_lens.to(torch.long)
    last_block = block_tables.shape[1] - 1
    if max_len is None:
        max_len = int(seq_lens.max()) if B else 0
    for t0 in range(0, max_len, tile):
        pos = torch.arange(t0, t0 + tile, device=q.device)                   # [N]
        valid = pos[None, :] < seq_lens[:, None]                             # [B, N]
        col = (pos // block_size).clamp(max=last_block).expand(B, -1)
        slots = block_tables.gather(1, col) * block_size + pos % block_size  # [B, N]
        k = keys_flat[slots].to(acc_dtype)                                   # [B, N, KVH, D]
        scores = torch.einsum("bkgd,bnkd->bkgn", qg, k) * scale
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        m_new = torch.maximum(m, scores.amax(-1))
        # Rows that have seen no key yet keep m = -inf; shift by 0 there to avoid inf - inf.
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(scores - shift[..., None])
        alpha = torch.exp(m - shift)
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[..., None] + torch.einsum(
            "bkgn,bnkd->bkgd", p, values_flat[slots].to(acc_dtype))
        m = m_new
    out = acc / torch.where(l > 0, l, torch.ones_like(l))[..., None]
    return out.view(B, H, D).to(q.dtype)


class PagedTorchBackend(AttentionBackend):
    name = "paged-torch"

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            out[:nd] = paged_decode_torch(q[:nd], k_cache, v_cache, meta.block_tables[:nd],
                                          meta.seq_lens_tensor[:nd], scale,
                                          max_len=max(meta.seq_lens[:nd]))
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
