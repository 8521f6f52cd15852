"""The reference attention: softmax(Q Kᵀ / √d + causal mask) · V, one sequence at a time.

Slow and obvious on purpose. Every faster backend is tested against this one.
"""
from __future__ import annotations

import torch

from folo_edu.attention.common import AttentionBackend, causal_mask, gather_kv
from folo_edu.attention.metadata import AttentionMetadata


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q [L, H, D], k/v [S, KVH, D], mask [L, S] bool -> [L, H, D].

    Grouped-query attention: each of the KVH key/value heads serves H // KVH
    query heads, so K and V are repeated to H heads.
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("lhd,shd->hls", q, k) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    # Softmax in at least float32: half-precision exp() overflows.
    probs = torch.softmax(scores.to(torch.promote_types(q.dtype, torch.float32)), dim=-1)
    return torch.einsum("hls,shd->lhd", probs.to(v.dtype), v)


class NaiveBackend(AttentionBackend):
    name = "naive"

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        for i in range(meta.num_seqs):
            start, qlen, slen = meta.query_start_loc[i], meta.query_lens[i], meta.seq_lens[i]
            keys = gather_kv(k_cache, meta.block_tables[i], slen)
            values = gather_kv(v_cache, meta.block_tables[i], slen)
            mask = causal_mask(qlen, slen, q.device)
            out[start:start + qlen] = naive_attention(q[start:start + qlen], keys, values,
                                                      mask, scale)
        return out
