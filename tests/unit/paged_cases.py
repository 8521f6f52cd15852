"""Random paged-cache decode cases and a plain-torch reference, shared by the M4 tests
of the torch, flex and Triton paged attention (test_06_backends, test_06_triton_kernels)."""
from __future__ import annotations

import torch


def reference_attention(q, k_cache, v_cache, block_tables, seq_lens, scale):
    """Plain torch, float64, one sequence at a time: gather its keys, softmax(q k^T) v.

    q [B, H, D]; caches [N, block_size, KVH, D]; a row with seq_len 0 gives zeros.
    """
    B, H, D = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(B, H, D, dtype=torch.float64)
    for b, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue  # padding row: zeros
        blocks = block_tables[b, :-(-n // block_size)].cpu()
        # [n, KVH, D] -> [n, H, D]: query head h reads KV head h // group
        k, v = (c.cpu()[blocks].flatten(0, 1)[:n].double().repeat_interleave(H // kv_heads, 1)
                for c in (k_cache, v_cache))
        scores = torch.einsum("hd,nhd->hn", q[b].cpu().double(), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
    return out


def paged_case(block_size, head_dim, num_heads, kv_heads, seq_lens, dtype=torch.float64,
               device="cpu", seed=0):
    """Random q (a strided view) and caches; each sequence's blocks scattered at random.

    Returns q, k_cache, v_cache, block_tables (int32, rows padded with 0), seq_lens (int32).
    The cache has 3 more blocks than the sequences own.
    """
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few blocks nobody owns
    width = max(blocks_per_seq)
    physical = torch.randperm(num_blocks, generator=g).tolist()  # shuffled, not contiguous
    block_tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)  # padded with 0
    for b, nb in enumerate(blocks_per_seq):
        block_tables[b, :nb] = torch.tensor([physical.pop() for _ in range(nb)])

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    k_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    v_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    q = rand(len(seq_lens), num_heads + 2, head_dim)[:, 1:-1]  # a non-contiguous view
    return (q, k_cache, v_cache, block_tables.to(device),
            torch.tensor(seq_lens, dtype=torch.int32, device=device))
