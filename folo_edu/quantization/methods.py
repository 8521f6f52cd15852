"""Round to nearest (RTN) and GPTQ (Frantar et al. 2022, arXiv 2210.17323) for one layer.

Both take a weight W [out, in] and return a QuantizedWeight: integers q [out, in],
scales and zeros [groups, out], g_idx [in]. GPTQ also takes H = 2 X Xᵀ (X the layer's
calibration inputs, [in, tokens]) and quantizes one input column at a time, pushing
each column's rounding error onto the columns not yet quantized, weighted by the
inverse Hessian, so the layer's *output* on the calibration data changes least.

``gptq`` is the paper's algorithm with lazy batch updates (blocks of 128 columns, the
rest of W updated once per block); ``gptq_reference`` is the same maths one column at a
time with every update applied at once. A test checks they agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from folo_edu.quantization.grid import dequantize, grid_params, quantize
from folo_edu.quantization.quant_config import GPTQConfig


@dataclass
class QuantizedWeight:
    q: torch.Tensor        # [out, in] integers in [0, 2**bits)
    scales: torch.Tensor   # [groups, out]
    zeros: torch.Tensor    # [groups, out]
    g_idx: torch.Tensor    # [in] group of each input column

    def dequantize(self) -> torch.Tensor:
        """[out, in] in the scales' dtype."""
        g = self.g_idx.long()
        return (self.q - self.zeros[g].t()) * self.scales[g].t()


def rtn(w: torch.Tensor, cfg: GPTQConfig) -> QuantizedWeight:
    """Round every weight to its group's grid; no calibration data."""
    out_f, in_f = w.shape
    cfg.num_groups(in_f)  # checks the group size
    width = cfg.group_width(in_f)
    q = torch.empty_like(w)
    scales, zeros = [], []
    for g0 in range(0, in_f, width):
        group = w[:, g0:g0 + width]
        scale, zero = grid_params(group, cfg.bits, cfg.sym)
        q[:, g0:g0 + width] = quantize(group, scale[:, None], zero[:, None], cfg.bits)
        scales.append(scale)
        zeros.append(zero)
    g_idx = torch.arange(in_f, device=w.device) // width
    return QuantizedWeight(q, torch.stack(scales), torch.stack(zeros), g_idx)


def _prepare(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig):
    """Dead inputs, act-order permutation, dampening and the upper Cholesky factor of H⁻¹."""
    w, h = w.clone().double(), h.clone().double()
    dead = torch.diag(h) == 0  # an input that never fired: its weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = (torch.argsort(torch.diag(h), descending=True) if cfg.desc_act
            else torch.arange(w.shape[1], device=w.device))
    w, h = w[:, perm], h[perm][:, perm]
    damp = cfg.damp_percent * torch.diag(h).mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(8):  # raise the dampening until H is safely positive definite
        chol, info = torch.linalg.cholesky_ex(h + damp * eye)
        if info == 0:
            hinv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info == 0:
                return w, upper, perm
        damp *= 10
    raise ValueError("GPTQ: the Hessian stays singular after raising damp_percent 10^8-fold; "
                     "expected calibration data that exercises the layer's inputs")


def _finish(q, scales, zeros, perm, cfg: GPTQConfig, dtype) -> QuantizedWeight:
    """Undo the act-order permutation; each input column keeps the group it was given."""
    in_f = q.shape[1]
    inv = torch.argsort(perm)
    g_idx = (torch.arange(in_f, device=q.device) // cfg.group_width(in_f))[inv]
    return QuantizedWeight(q[:, inv], torch.stack(scales).to(dtype),
                           torch.stack(zeros).to(dtype), g_idx)


def gptq(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig,
         block_size: int = 128) -> QuantizedWeight:
    """GPTQ with lazy batch updates. w [out, in], h [in, in]."""
    out_f, in_f = w.shape
    width = cfg.group_width(in_f)
    cfg.num_groups(in_f)  # checks the group size
    # A group's grid is taken from its weights as they are when it starts; that is exact
    # when every group starts at a block start or lies inside one block.
    if not (block_size % width == 0 or width % block_size == 0):
        block_size = width
    w, hinv, perm = _prepare(w, h, cfg)
    q = torch.zeros_like(w)
    scales, zeros = [], []
    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        wb, err = w[:, b0:b1].clone(), torch.zeros(out_f, b1 - b0, dtype=w.dtype)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % width == 0:  # a new group: its grid from its current weights
                group = wb[:, i:i + width] if i + width <= b1 - b0 else w[:, col:col + width]
                scale, zero = grid_params(group, cfg.bits, cfg.sym)
                scales.append(scale)
                zeros.append(zero)
            qc = quantize(wb[:, i], scale, zero, cfg.bits)
            q[:, col] = qc
            e = (wb[:, i] - dequantize(qc, scale, zero)) / hb[i, i]
            wb[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]  # the lazy update, once per block
    return _finish(q, scales, zeros, perm, cfg, h.dtype)


def gptq_reference(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig) -> QuantizedWeight:
    """The same algorithm without lazy batching: each column's error updates all later
    columns at once. Slow (in² row updates); for tests and for reading."""
    out_f, in_f = w.shape
    width = cfg.group_width(in_f)
    cfg.num_groups(in_f)  # checks the group size
    w, hinv, perm = _prepare(w, h, cfg)
    q = torch.zeros_like(w)
    scales, zeros = [], []
    for col in range(in_f):
        if col % width == 0:
            scale, zero = grid_params(w[:, col:col + width], cfg.bits, cfg.sym)
            scales.append(scale)
            zeros.append(zero)
        q[:, col] = quantize(w[:, col], scale, zero, cfg.bits)
        e = (w[:, col] - dequantize(q[:, col], scale, zero)) / hinv[col, col]
        w[:, col:] -= e[:, None] * hinv[col, col:][None, :]
    return _finish(q, scales, zeros, perm, cfg, h.dtype)
