"""PagedAttention decode for CPUs: one Numba-compiled loop that reads K/V in place.

The sdpa backend copies every decode's keys and values out of the paged cache into
a padded batch each step (a gather), then attends over the copy. On a CPU that copy
costs more than the attention itself: the data is read, written, and read again.
This kernel walks each sequence's block table instead and reads every key and
value row where it lies, once per step: the PagedAttention idea (Kwon et al. 2023,
arXiv 2309.06180) written as a plain loop.

For one sequence, with G = H // KVH query heads per KV head:
    1. scores:  for each position t (block = table[t // bs], offset t % bs), read the
                row K[block, offset] ([KVH, D]) once and dot it with all H queries;
    2. softmax: per query head, over the sequence's positions (max, exp, sum);
    3. output:  read each row V[block, offset] once, add weight * row to every head.
The loop over d is contiguous, so LLVM turns it into SIMD (AVX2: 8 floats at a time).

Numba compiles this on first use (a few seconds per dtype) and caches the machine
code on disk, so later processes start in about a second. Sequences are independent,
so rows are split across threads: the kernel releases the GIL (nogil=True), and plain
Python threads run the halves at the same time. No Numba thread pool is started,
so it never competes with torch's own OpenMP threads.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

try:
    import numba
    import numpy as np
except ImportError as e:  # numba is an optional speed-up; sdpa works without it
    numba, np = None, None
    _IMPORT_ERROR = str(e)

# Kernels exist for these dtypes; others (bf16, fp16) go through SDPA.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def numba_unavailable_reason() -> str | None:
    if numba is None:
        return f"Numba is not installed ({_IMPORT_ERROR}); pip install numba"
    return None


def _decode_rows(q, k_cache, v_cache, block_tables, seq_lens, scale, out, first, last, zero):
    """Attention for decode rows first..last-1: q [B, H, D] -> out [B, H, D].

    ``zero`` is 0 in the compute dtype; passing it in makes Numba compile the
    accumulators in that dtype (float32 stays float32, float64 stays float64).
    """
    H, D = q.shape[1], q.shape[2]
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = H // kv_heads
    longest = 1
    for b in range(first, last):
        longest = max(longest, seq_lens[b])
    scores = np.empty((H, longest), dtype=q.dtype)
    acc = np.empty((H, D), dtype=q.dtype)
    for b in range(first, last):
        length = seq_lens[b]
        if length == 0:  # a padding row: attends to nothing
            out[b] = zero
            continue
        for t in range(length):  # 1. scores, each key row read once
            key = k_cache[block_tables[b, t // block_size], t % block_size]   # [KVH, D]
            for h in range(H):
                kv = h // group
                dot = zero
                for d in range(D):
                    dot += q[b, h, d] * key[kv, d]
                scores[h, t] = dot * scale
        for h in range(H):  # 2. softmax over this sequence's positions
            top = scores[h, 0]
            for t in range(1, length):
                top = max(top, scores[h, t])
            total = zero
            for t in range(length):
                e = np.exp(scores[h, t] - top)
                scores[h, t] = e
                total += e
            for t in range(length):
                scores[h, t] /= total
        acc[:] = zero
        for t in range(length):  # 3. weighted sum of values, each row read once
            value = v_cache[block_tables[b, t // block_size], t % block_size]
            for h in range(H):
                kv = h // group
                w = scores[h, t]
                for d in range(D):
                    acc[h, d] += w * value[kv, d]
        out[b] = acc


if numba is not None:
    # Reassociation lets LLVM vectorize the dot products; no "no NaN/inf" assumptions.
    _decode_rows = numba.njit(nogil=True, cache=True, boundscheck=False,
                              fastmath={"reassoc", "contract", "arcp"})(_decode_rows)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_kernel_threads: int | None = None  # set while torch_on_one_thread() holds


def run_split(kernel, args: tuple, cuts: list[int], zero) -> None:
    """``kernel(*args, a, b, zero)`` for each slice [a, b) between consecutive ``cuts``,
    all at once: the last slice on the calling thread, the others on a shared pool."""
    slices = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    helpers = len(slices) - 1
    if helpers > 0 and helpers not in _POOLS:
        _POOLS[helpers] = ThreadPoolExecutor(helpers, thread_name_prefix="folo-numba")
    jobs = [_POOLS[helpers].submit(kernel, *args, a, b, zero) for a, b in slices[:-1]]
    kernel(*args, *slices[-1], zero)
    for job in jobs:
        job.result()


def kernel_threads() -> int:
    """How many threads the Numba kernels split their work over: torch's thread count."""
    return _kernel_threads or torch.get_num_threads()


@contextmanager
def torch_on_one_thread():
    """Run the block with torch's own ops on one thread, the Numba kernels on all of them.

    For steps whose heavy work is in these kernels. torch's OpenMP workers keep spinning
    for a while after each parallel op (libgomp's default wait policy), and while they
    spin they hold cores the kernels' Python threads need. On the 2-core course machine at
    2 threads that made a 64-request decode step 0.84 s instead of 0.50 s.
    """
    global _kernel_threads
    threads = torch.get_num_threads()
    if threads == 1 or _kernel_threads is not None:
        yield
        return
    _kernel_threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _kernel_threads = None


class NumbaDecoder:
    """Runs the kernel over a batch, split across ``kernel_threads()`` threads."""

    def __call__(self, q, k_cache, v_cache, block_tables, seq_lens, scale: float):
        """q [B, H, D], caches [N, bs, KVH, D], block_tables [B, W], seq_lens [B] -> [B, H, D]."""
        q = q.contiguous()
        out = torch.empty_like(q)
        qn = q.numpy()
        kind = qn.dtype.type  # scale and zero in the compute dtype
        args = (qn, k_cache.numpy(), v_cache.numpy(), block_tables.numpy(),
                seq_lens.numpy(), kind(scale), out.numpy())
        zero = kind(0)
        rows = q.shape[0]
        workers = min(kernel_threads(), rows)
        if workers <= 1:
            _decode_rows(*args, 0, rows, zero)
            return out
        # Cut at equal shares of key positions, not of rows: the work is the length.
        lens = seq_lens.to(torch.long).cumsum(0)
        cuts = [0] + [int(torch.searchsorted(lens, lens[-1] * i // workers))
                      for i in range(1, workers)] + [rows]
        run_split(_decode_rows, args, cuts, zero)
        return out
