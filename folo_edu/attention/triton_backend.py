"""The Triton backend: K/V stored and decodes attended by our own Triton kernels.

``triton_kernels.store_kv`` writes this step's K/V through the slot mapping and
``triton_kernels.paged_decode_attention`` runs PagedAttention for the decode rows,
the same online-softmax loop as ``paged_torch.paged_decode_torch`` but as one GPU
program per (sequence, head). Prefills go through SDPA.

Its decode path reads only tensors (block tables, seq_lens) whose shapes depend on
the batch size alone, so a decode step can be captured in a CUDA graph. On a CPU the
kernels run in Triton's interpreter: correct, and very slow; the tests use it.
"""
from __future__ import annotations

import torch

from folo_edu.attention.common import AttentionBackend
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.sdpa import sdpa_prefills


def triton_unavailable_reason() -> str | None:
    from folo_edu.attention import triton_kernels

    return triton_kernels.TRITON_UNAVAILABLE_REASON


class TritonBackend(AttentionBackend):
    name = "triton"
    supports_cuda_graphs = True

    def __init__(self):
        from folo_edu.attention import triton_kernels

        self.kernels = triton_kernels

    def write_kv(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        self.kernels.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            out[:nd] = self.kernels.paged_decode_attention(
                q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens_tensor[:nd],
                scale)
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
