"""AttentionMetadata: what every attention layer needs to know about one step.

The model runner builds it once per step; all layers share it. Sequences are
ordered decodes first (one query token each), then prefills (many query tokens),
so the decode queries are simply q[:num_decodes].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    query_lens: list[int]        # new tokens per sequence this step
    seq_lens: list[int]          # tokens per sequence after this step (cached + new)
    query_start_loc: list[int]   # where each sequence's queries start in the flat batch
    slot_mapping: torch.Tensor   # [T] flat KV-cache slot for each new token
    block_tables: torch.Tensor   # [B, max_blocks] physical block ids per sequence
    block_size: int              # tokens per KV block
    num_decodes: int             # the first num_decodes sequences have query_len == 1
    # Decode-batch helpers, built once per step instead of once per layer:
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, blocks to read]
    decode_key_mask: torch.Tensor | None = None      # [num_decodes, 1, 1, max_len] bool
    decode_max_len: int = 0

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @classmethod
    def build(cls, query_lens: list[int], seq_lens: list[int], slot_mapping: torch.Tensor,
              block_tables: torch.Tensor, block_size: int) -> "AttentionMetadata":
        num_decodes = 0
        while num_decodes < len(query_lens) and query_lens[num_decodes] == 1:
            num_decodes += 1
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        meta = cls(query_lens, seq_lens, starts, slot_mapping, block_tables, block_size,
                   num_decodes)
        if num_decodes:
            device = block_tables.device
            max_len = max(seq_lens[:num_decodes])
            blocks = -(-max_len // block_size)
            lens = torch.tensor(seq_lens[:num_decodes], device=device)
            meta.decode_block_tables = block_tables[:num_decodes, :blocks]
            meta.decode_key_mask = (torch.arange(max_len, device=device)[None, :]
                                    < lens[:, None])[:, None, None, :]
            meta.decode_max_len = max_len
        return meta

    def context_len(self, i: int) -> int:
        """Tokens of sequence i already in the cache before this step."""
        return self.seq_lens[i] - self.query_lens[i]
