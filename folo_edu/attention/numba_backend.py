"""The Numba backend: decodes attend through our CPU PagedAttention kernel.

``numba_kernels`` walks each decode's block table and reads K/V where they lie, with
no per-step gather; prefills go through SDPA, as in every other backend. It is the
default on a CPU when Numba is installed. Dtypes the kernel was not built for
(bf16, fp16) fall back to the SDPA decode path.
"""
from __future__ import annotations

import torch

from folo_edu.attention.common import AttentionBackend
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.sdpa import sdpa_decodes, sdpa_prefills


def numba_unavailable_reason() -> str | None:
    from folo_edu.attention import numba_kernels  # imports numba: about half a second

    return numba_kernels.numba_unavailable_reason()


class NumbaBackend(AttentionBackend):
    name = "numba"

    def __init__(self):
        from folo_edu.attention import numba_kernels

        self.kernels = numba_kernels
        self.decode = numba_kernels.NumbaDecoder()

    def forward(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd and q.device.type == "cpu" and q.dtype in self.kernels.SUPPORTED_DTYPES:
            out[:nd] = self.decode(q[:nd], k_cache, v_cache, meta.block_tables[:nd],
                                   meta.seq_lens_tensor[:nd], scale)
        elif nd:
            sdpa_decodes(out, q, k_cache, v_cache, meta, scale)
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out
