"""QuantLinear: a linear map whose weight is stored as GPTQ integers.

It keeps the Hugging Face GPTQ tensors (qweight, qzeros, scales, g_idx; see packing.py)
and computes y = x Wᵀ + b. ``use_kernel`` picks how (kernels.select_kernel):
  reference  dequantize W once in the compute dtype and call F.linear: exact (float64
             included, for the oracle tests), but holds a float copy of W, so it saves
             no memory; it is the readable definition the fast paths are tested against
  int4-cpu   torch's CPU int4 matmul (bfloat16 compute): W stays packed in 4 bits
  triton     our Triton dequant-matmul kernel on CUDA: W stays packed
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folo_edu.quantization.packing import dequantize_gptq
from folo_edu.quantization.quant_config import GPTQConfig


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, cfg: GPTQConfig, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.cfg = in_features, out_features, cfg
        bits, groups = cfg.bits, cfg.num_groups(in_features)
        for name, dim in (("in_features", in_features), ("out_features", out_features)):
            if (dim * bits) % 32:
                raise ValueError(f"quantization_config.bits={bits}: a layer with {name}={dim} "
                                 f"cannot be packed in 32-bit words; expected {name} * bits "
                                 "to be a multiple of 32")
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features,
                                                    dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(groups, out_features * bits // 32,
                                                   dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.kernel, self.kernel_reason = "reference", "not chosen yet"
        self._fast = None  # the fast path's matmul, x [T, in] -> [T, out]
        self._dequantized: torch.Tensor | None = None  # the reference path's cached W

    def use_kernel(self, dtype: torch.dtype) -> str:
        """Choose the fastest path that runs here for ``dtype``; say which and why."""
        from folo_edu.quantization import kernels

        c = self.cfg
        choice = kernels.select_kernel(self.qweight.device, c.bits, c.group_size, c.desc_act,
                                       self.out_features, dtype)
        self.kernel, self.kernel_reason = choice.name, choice.reason
        self._fast, self._dequantized = None, None
        if choice.name == "int4-cpu":
            state = kernels.prepare_int4_cpu(self.qweight, self.qzeros, self.scales, self.g_idx,
                                             c.group_size)
            self._fast = lambda x: kernels.int4_cpu_matmul(x, state)
            self._int4_state = state
        elif choice.name == "triton":
            self._fast = lambda x: kernels.triton_gptq_matmul(
                x, self.qweight, self.qzeros, self.scales, self.g_idx, c.bits, c.group_size)
        return self.kernel

    def weight_bytes(self) -> int:
        """Bytes this layer's weight takes while serving (packed, or the float copy)."""
        if self.kernel == "int4-cpu":
            return self._int4_state.nbytes()
        packed = sum(t.numel() * t.element_size()
                     for t in (self.qweight, self.qzeros, self.scales, self.g_idx))
        cached = 0 if self._dequantized is None else (
            self._dequantized.numel() * self._dequantized.element_size())
        return packed + cached

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W [out, in] in ``dtype``."""
        return dequantize_gptq(self.qweight, self.qzeros, self.scales, self.g_idx,
                               self.cfg.bits, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast is not None:
            y = self._fast(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias
        w = self._dequantized
        if w is None or w.dtype != x.dtype:
            w = self._dequantized = self.dequantized_weight(x.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"in={self.in_features}, out={self.out_features}, bits={c.bits}, "
                f"group_size={c.group_size}, desc_act={c.desc_act}, kernel={self.kernel}")
