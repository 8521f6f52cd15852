"""Attention through torch's fused scaled_dot_product_attention (SDPA).

Decodes (one query each) run as a few batched calls: their keys are gathered from
the cache into padded [B, max_len] batches of similar lengths, with a length mask.
Prefills run one call each; a prompt with nothing cached yet uses its fresh K/V and
is_causal directly. Other backends reuse ``sdpa_prefills`` for their prefill part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from folo_edu.attention.common import (AttentionBackend, causal_mask, gather_kv,
                                       gather_kv_batch)
from folo_edu.attention.metadata import AttentionMetadata


def sdpa_decodes(out, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> None:
    """Attention for the decode rows q[:num_decodes], written into out."""
    for g in meta.decode_groups:
        keys = gather_kv_batch(k_cache, g.block_tables, g.max_len)
        values = gather_kv_batch(v_cache, g.block_tables, g.max_len)
        # q [B, H, D] -> [B, H, 1, D]; keys [B, S, KVH, D] -> [B, KVH, S, D]
        o = F.scaled_dot_product_attention(
            q[g.start:g.end, :, None], keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=g.key_mask, scale=scale, enable_gqa=True)
        out[g.start:g.end] = o[:, :, 0]


def sdpa_prefills(out, q, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                  k, v) -> None:
    """Attention for the prefill rows (every sequence after the decodes), into out."""
    for i in range(meta.num_decodes, meta.num_seqs):
        start, qlen, slen = meta.query_start_loc[i], meta.query_lens[i], meta.seq_lens[i]
        qi = q[start:start + qlen].transpose(0, 1)[None]
        if qlen == slen:  # nothing cached before: use this step's K/V as they are
            ki, vi, mask = k[start:start + qlen], v[start:start + qlen], None
        else:
            ki = gather_kv(k_cache, meta.block_tables[i], slen)
            vi = gather_kv(v_cache, meta.block_tables[i], slen)
            mask = causal_mask(qlen, slen, q.device)
        o = F.scaled_dot_product_attention(
            qi, ki.transpose(0, 1)[None], vi.transpose(0, 1)[None], attn_mask=mask,
            is_causal=mask is None, scale=scale, enable_gqa=True)
        out[start:start + qlen] = o[0].transpose(0, 1)


class SdpaBackend(AttentionBackend):
    name = "sdpa"

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        sdpa_decodes(out, q, k_cache, v_cache, meta, scale)
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
