"""The quantization grid of one group of weights: scale, zero point, round, dequantize.

A row of a group is stored as integers q in [0, maxq] (maxq = 2**bits - 1) and read back
as  w ~ scale * (q - zero).  The grid spans the row's [min, max] widened to include 0
(so a zero weight stays exactly zero), as in GPTQ's reference quantizer:
  asymmetric  scale = (max - min) / maxq, zero = round(-min / scale)
  symmetric   max = max(|min|, max), min = -max, and zero = (maxq + 1) / 2
The zero point is kept >= 1, because the Hugging Face GPTQ checkpoint format stores
zero - 1 as an unsigned integer (a group whose weights are all >= 0 loses one step).
"""
from __future__ import annotations

import torch


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``w`` [rows, cols]: (scale [rows], zero [rows])."""
    maxq = (1 << bits) - 1
    zeros = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    lo, hi = torch.minimum(w.min(dim=1).values, zeros), torch.maximum(w.max(dim=1).values, zeros)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    flat = (lo == 0) & (hi == 0)  # an all-zero row: any grid works
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scale = (hi - lo) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-lo / scale).clamp(1, maxq)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers q = clamp(round(w / scale) + zero, 0, maxq); scale and zero broadcast."""
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)
