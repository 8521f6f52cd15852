"""Hugging Face's GPTQ tensor layout: pack integer weights into int32 words and back.

Per quantized linear layer with ``in`` input and ``out`` output features, ``b`` bits:
  qweight  int32 [in * b / 32, out]      packed along the input dimension
  qzeros   int32 [groups, out * b / 32]  packed along the output dimension, zero - 1
  scales   float16 [groups, out]
  g_idx    int32 [in]                    the group of each input feature
Packing is a little-endian bit stream: value j of a column sits at bits j*b .. j*b+b-1 of
the stream, word k holding stream bits 32k .. 32k+31. For 2, 4 and 8 bits that is
"value j of a word at bits j*b"; for 3 bits, 32 values fill 3 words and some values
straddle two words (the standard GPTQ 3-bit layout).
The weight is  W[i, o] = scales[g, o] * (q[i, o] - zero[g, o])  with g = g_idx[i].
"""
from __future__ import annotations

import torch


def pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit integers along ``dim`` into int32 words:
    [..., n, ...] -> [..., n * bits / 32, ...] (n * bits must be a multiple of 32)."""
    v = values.movedim(dim, 0).to(torch.int64)
    n = v.shape[0]
    if (n * bits) % 32:
        raise ValueError(f"{n} values of {bits} bits do not fill whole 32-bit words; "
                         f"expected a multiple of {32 // _gcd(32, bits)}")
    if v.numel() and (v.min() < 0 or v.max() >= (1 << bits)):
        raise ValueError(f"values outside [0, {(1 << bits) - 1}] cannot be packed in {bits} bits")
    # Work on runs of 32 values (= `bits` words): value j of a run starts at stream bit
    # j * bits, i.e. in word (j * bits) // 32 of the run, and may spill into the next.
    runs = v.reshape(n // 32 if n >= 32 else 1, min(n, 32), *v.shape[1:]) if n % 32 == 0 \
        else v.reshape(1, n, *v.shape[1:])
    words = torch.zeros(runs.shape[0], (runs.shape[1] * bits) // 32, *v.shape[1:],
                        dtype=torch.int64, device=v.device)
    for j in range(runs.shape[1]):
        w, off = divmod(j * bits, 32)
        words[:, w] |= (runs[:, j] << off) & 0xFFFFFFFF
        if off + bits > 32:  # the value straddles into the next word (3 bits)
            words[:, w + 1] |= runs[:, j] >> (32 - off)
    return _to_int32(words.reshape(-1, *v.shape[1:])).movedim(0, dim)


def unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of ``pack``: int32 words along ``dim`` -> int64 values in [0, 2**bits)."""
    w = words.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    n = (w.shape[0] * 32) // bits
    mask = (1 << bits) - 1
    if 32 % bits == 0:  # aligned: every word holds 32 / bits whole values
        per = 32 // bits
        shifts = torch.arange(0, 32, bits, device=w.device).view(1, per, *[1] * (w.dim() - 1))
        out = ((w.unsqueeze(1) >> shifts) & mask).reshape(n, *w.shape[1:])
        return out.movedim(0, dim)
    runs = w.reshape(-1, bits, *w.shape[1:])  # 32 values in every `bits` words
    out = torch.empty(runs.shape[0], 32, *w.shape[1:], dtype=torch.int64, device=w.device)
    for j in range(32):
        wi, off = divmod(j * bits, 32)
        value = runs[:, wi] >> off
        if off + bits > 32:
            value = value | (runs[:, wi + 1] << (32 - off))
        out[:, j] = value & mask
    return out.reshape(n, *w.shape[1:]).movedim(0, dim)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as int32 (two's complement)."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def pack_gptq(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
              bits: int) -> dict[str, torch.Tensor]:
    """q [out, in] ints, scales and zeros [groups, out], g_idx [in] -> the HF tensors."""
    return {"qweight": pack(q.t(), bits, dim=0),
            "qzeros": pack(zeros.round().to(torch.int64) - 1, bits, dim=1),
            "scales": scales.to(torch.float16),
            "g_idx": g_idx.to(torch.int32)}


def dequantize_gptq(qweight, qzeros, scales, g_idx, bits: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The HF tensors -> the weight as a linear layer holds it, [out, in] in ``dtype``."""
    q = unpack(qweight, bits, dim=0)                      # [in, out]
    zeros = unpack(qzeros, bits, dim=1) + 1               # [groups, out], stored minus one
    g = g_idx.long()
    w = (q - zeros[g]).to(dtype) * scales[g].to(dtype)   # [in, out]
    return w.t().contiguous()
