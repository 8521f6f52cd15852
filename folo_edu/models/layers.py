"""The building blocks of a Llama-family decoder: RMSNorm, RoPE, SwiGLU MLP.

Every tensor here is "flat": [num_tokens, ...] with the tokens of all requests in
the step laid end to end. No padding, no batch dimension; `positions` says where
each token sits in its own sequence.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.

    The statistics are computed in float32 whatever the model dtype, exactly as the
    transformers reference does (its float64 models also normalise in float32), so
    that our logits match it to the last bits.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, rope: dict) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), with llama3 or linear scaling if configured."""
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float)
                                             / head_dim))
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind == "llama3":
        # Llama 3.1 scaling: keep high frequencies, divide low ones by `factor`,
        # and blend smoothly in between (Meta's Llama 3.1 reference formula).
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        return torch.where(medium, blended, scaled)
    raise ValueError(f"rope_type={kind!r}: expected 'default', 'linear' or 'llama3'")


def rope_parameters(hf_config) -> dict:
    """The RoPE settings of a config, from transformers 5 (rope_parameters) or 4."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = getattr(hf_config, "rope_theta", 10000.0)
    return params


class RotaryEmbedding(nn.Module):
    """Rotates each query/key pair of dims by an angle position * inv_freq.

    cos/sin are computed in float32 (as the reference does) for every position up
    to max_position once, then looked up by `positions` each step.
    """

    def __init__(self, head_dim: int, max_position: int, rope: dict):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, rope)
        freqs = torch.arange(max_position, dtype=torch.float)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def lookup(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for these positions, [T, 1, D]: looked up once per step, used by all layers."""
        return (self.cos[positions].to(dtype)[:, None, :],
                self.sin[positions].to(dtype)[:, None, :])


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H, D] and k [T, KVH, D] by the angles in cos_sin (from lookup)."""
    cos, sin = cos_sin
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Linear(nn.Linear):
    """nn.Linear, whose calls on a few rows may go through a faster kernel.

    ``matmul`` is None (torch's F.linear) or a kernel with ``handles(x, weight)`` and
    ``(x, weight, bias)``, such as the CPU decode matmul in ``numba_linear``; the model
    sets it on all its Linear maps at once (DecoderModel.set_linear_kernel).
    """

    matmul = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.matmul)


def linear(x, weight, bias=None, kernel=None) -> torch.Tensor:
    """x @ weight.T + bias, through ``kernel`` when it takes this call, else F.linear."""
    if kernel is not None and kernel.handles(x, weight):
        return kernel(x, weight, bias)
    return F.linear(x, weight, bias)


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up are one fused matmul."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
