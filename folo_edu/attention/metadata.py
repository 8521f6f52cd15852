"""AttentionMetadata: what every attention layer needs to know about one step.

The model runner builds it once per step; all layers share it. Sequences are
ordered decodes first (one query token each, sorted by length), then prefills
(many query tokens), so the decode queries are simply q[:num_decodes].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Decodes are attended in up to this many groups of similar length, each padded only
# to its own longest sequence: less K/V to gather than padding all to the longest.
MAX_DECODE_GROUPS = 4


@dataclass
class DecodeGroup:
    """Decodes start..end (rows of q), padded to max_len keys, built once per step."""

    start: int
    end: int
    block_tables: torch.Tensor  # [end - start, blocks to read]
    key_mask: torch.Tensor      # [end - start, 1, 1, max_len] bool: key is real, not padding
    max_len: int


@dataclass
class AttentionMetadata:
    query_lens: list[int]        # new tokens per sequence this step
    seq_lens: list[int]          # tokens per sequence after this step (cached + new)
    query_start_loc: list[int]   # where each sequence's queries start in the flat batch
    slot_mapping: torch.Tensor   # [T] flat KV-cache slot for each new token
    block_tables: torch.Tensor   # [B, max_blocks] physical block ids per sequence
    block_size: int              # tokens per KV block
    num_decodes: int             # the first num_decodes sequences have query_len == 1
    seq_lens_tensor: torch.Tensor | None = None  # [B] int32 seq_lens, on the device
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    # What a backend builds once per step and every layer reuses (e.g. a block mask).
    per_step: dict = field(default_factory=dict)

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
        device = block_tables.device
        meta = cls(query_lens, seq_lens, starts, slot_mapping, block_tables, block_size,
                   num_decodes, torch.tensor(seq_lens, dtype=torch.int32, device=device))
        groups = min(MAX_DECODE_GROUPS, num_decodes)
        bounds = [num_decodes * g // groups for g in range(groups + 1)] if groups else []
        for start, end in zip(bounds, bounds[1:]):
            max_len = max(seq_lens[start:end])
            lens = meta.seq_lens_tensor[start:end]
            mask = torch.arange(max_len, device=device)[None, :] < lens[:, None]
            meta.decode_groups.append(DecodeGroup(
                start, end, block_tables[start:end, :-(-max_len // block_size)],
                mask[:, None, None, :], max_len))
        return meta
