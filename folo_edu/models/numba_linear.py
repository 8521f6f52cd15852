"""A CPU matmul for a few rows: decode steps' linear maps, one pass over the weights.

In a decode step each linear map multiplies a few token rows ([M, in], M = the
running requests) by a weight matrix of millions of numbers. With M small the
work is bound by reading the weights from memory: 540 MB per step for the default
model in float32, whatever M is. torch's GEMM is built for large M; measured on a
2-core EPYC (AVX2) at one thread, it read the weights at 4-8 GB/s for M = 1-16
(a plain sum reads 9-11 GB/s there), and M = 2-4 took nearly twice as long as M = 1.

This kernel reads each weight row once and uses it for every token row while it is
in cache: tiles of 4 weight rows x 2 token rows, the dot products over ``in``
vectorized by LLVM (AVX2: 8 floats at a time). On that machine a whole decode step
of the default model was 1.4-1.8x faster with it at 2-16 running requests and
1.04-1.3x at 32-64 (docs/dev/cpu_speed.md). Beyond ``MAX_ROWS`` rows (prefills)
torch's blocked GEMM, which keeps tiles of x in cache too, is as fast or faster.

Numba compiles it on first use (a few seconds per dtype) and caches the machine
code on disk. It releases the GIL, so output columns are split across Python threads.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from folo_edu.attention.numba_kernels import (kernel_threads, numba, numba_unavailable_reason,
                                              run_split, torch_on_one_thread)

SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Up to this many rows the kernel beat torch in whole decode steps of the default model
# on the machine above; by 128 rows torch's GEMM was level or ahead (docs/dev/cpu_speed.md).
MAX_ROWS = 64


def _matmul_cols(x, w, out, first, last, zero):
    """out[:, first:last] = x @ w[first:last].T; x [M, K], w [N, K], out [M, N].

    ``first`` and ``last`` are multiples of 4 except the matrix's own end. ``zero`` in
    the compute dtype makes the accumulators that dtype (float32 stays float32).
    """
    rows, inner = x.shape
    n = first
    while n + 4 <= last:  # tiles of 4 weight rows: each row read once for all M
        m = 0
        while m + 2 <= rows:  # ... and 2 token rows: 8 accumulators
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
            for k in range(inner):
                x0, x1 = x[m, k], x[m + 1, k]
                w0, w1, w2, w3 = w[n, k], w[n + 1, k], w[n + 2, k], w[n + 3, k]
                a00 += x0 * w0
                a01 += x0 * w1
                a02 += x0 * w2
                a03 += x0 * w3
                a10 += x1 * w0
                a11 += x1 * w1
                a12 += x1 * w2
                a13 += x1 * w3
            out[m, n], out[m, n + 1], out[m, n + 2], out[m, n + 3] = a00, a01, a02, a03
            out[m + 1, n], out[m + 1, n + 1] = a10, a11
            out[m + 1, n + 2], out[m + 1, n + 3] = a12, a13
            m += 2
        if m < rows:  # an odd last token row
            a0 = a1 = a2 = a3 = zero
            for k in range(inner):
                x0 = x[m, k]
                a0 += x0 * w[n, k]
                a1 += x0 * w[n + 1, k]
                a2 += x0 * w[n + 2, k]
                a3 += x0 * w[n + 3, k]
            out[m, n], out[m, n + 1], out[m, n + 2], out[m, n + 3] = a0, a1, a2, a3
        n += 4
    for n in range(n, last):  # the last 1-3 weight rows
        for m in range(rows):
            acc = zero
            for k in range(inner):
                acc += x[m, k] * w[n, k]
            out[m, n] = acc


if numba is not None:
    # Reassociation lets LLVM vectorize the dot products; no "no NaN/inf" assumptions.
    _matmul_cols = numba.njit(nogil=True, cache=True, boundscheck=False,
                              fastmath={"reassoc", "contract", "arcp"})(_matmul_cols)


class SkinnyMatmul:
    """``F.linear`` for at most ``max_rows`` rows on a CPU, split over torch's thread count."""

    def __init__(self, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows

    def handles(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether this call goes through the kernel (else: torch)."""
        return (x.dim() == 2 and x.shape[0] <= self.max_rows and x.device.type == "cpu"
                and x.dtype == weight.dtype and x.dtype in SUPPORTED_DTYPES
                and weight.is_contiguous() and not torch.is_grad_enabled())

    def threads_for_step(self, num_tokens: int):
        """A context for one forward pass: when every matmul of it runs here (at most
        ``max_rows`` tokens), torch's ops run on one thread and the kernels on all of
        them (numba_kernels.torch_on_one_thread says why)."""
        return torch_on_one_thread() if num_tokens <= self.max_rows else nullcontext()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, in], weight [out, in] (contiguous), bias [out] or None -> [M, out]."""
        x = x.contiguous()
        out = x.new_empty(x.shape[0], weight.shape[0])
        xn, wn, on = x.numpy(), weight.numpy(), out.numpy()
        zero = xn.dtype.type(0)
        cols = weight.shape[0]
        workers = min(kernel_threads(), cols // 64 or 1)
        if workers <= 1:
            _matmul_cols(xn, wn, on, 0, cols, zero)
        else:  # cuts at multiples of 4: whole tiles in every slice
            cuts = [cols * i // workers // 4 * 4 for i in range(workers)] + [cols]
            run_split(_matmul_cols, (xn, wn, on), cuts, zero)
        if bias is not None:
            out += bias
        return out


def get_linear_kernel(name: str, device: torch.device, dtype: torch.dtype,
                      torch_compile: bool = False) -> SkinnyMatmul | None:
    """The kernel for EngineConfig.linear_backend, or None for torch's F.linear.

    "auto" takes the kernel on a CPU in float32/float64 when Numba is installed and the
    dense layers are not being torch.compiled (the compiled code would call out to it).
    """
    if name == "torch":
        return None
    reason = numba_unavailable_reason()
    if device.type != "cpu":
        reason = f"it is a CPU kernel and this engine runs on {device.type}"
    elif torch_compile:
        reason = "torch_compile=True compiles the dense layers with torch's own matmul"
    if name == "auto":
        return SkinnyMatmul() if reason is None and dtype in SUPPORTED_DTYPES else None
    if reason:
        raise ValueError(f"EngineConfig.linear_backend={name!r}: {reason}; "
                         "expected 'torch' or 'auto'")
    return SkinnyMatmul()
