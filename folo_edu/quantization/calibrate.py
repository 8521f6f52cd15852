"""Quantize a DecoderModel layer by layer, as GPTQ does.

Calibration sequences run through the model one decoder layer at a time. Inside a
layer the four linear maps are quantized in the order the data meets them (q/k/v,
then o, then gate/up, then down); each one's Hessian H = 2 X Xᵀ is collected from
inputs that already went through the quantized maps before it, and the layer's outputs,
computed with all four quantized, are the next layer's inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from folo_edu.quantization.methods import QuantizedWeight, gptq, rtn
from folo_edu.quantization.quant_config import GPTQConfig

# Our fused linear maps, in the order the data meets them inside a decoder layer.
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


class _Captured(Exception):
    """Raised by the input hook once it has what it needs: the rest of the layer is skipped."""


def layer_forward(layer, x: torch.Tensor, cos_sin) -> torch.Tensor:
    """One decoder layer over one whole sequence (causal attention, no KV cache)."""
    q, k, v = layer.before_attention(x, cos_sin)
    attn = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
        scale=layer.self_attn.scale, enable_gqa=True).transpose(0, 1)
    return layer.after_attention(x, attn)


def hessian(layer, module, xs, cos_sins) -> torch.Tensor:
    """H = 2/N Σ x xᵀ over every token's input to ``module`` ([in, in], float64).

    Each sample's product is computed in float32 (as GPTQ's reference code does: several
    times faster than float64 on a CPU) and summed in float64.
    """
    h = torch.zeros(module.in_features, module.in_features, dtype=torch.float64)
    count = 0

    def grab(_module, args):
        nonlocal h, count
        inp = args[0].reshape(-1, module.in_features).float()
        h += (2 * inp.t() @ inp).double()
        count += inp.shape[0]
        raise _Captured

    handle = module.register_forward_pre_hook(grab)
    try:
        for x, cs in zip(xs, cos_sins):
            try:
                layer_forward(layer, x, cs)
            except _Captured:
                pass
    finally:
        handle.remove()
    return h / max(count, 1)


@torch.no_grad()
def quantize_model(model, samples: list[torch.Tensor], cfg: GPTQConfig, method: str,
                   progress=None) -> dict[str, QuantizedWeight]:
    """Quantize every linear map of every decoder layer of ``model`` in place (its weights
    become the dequantized ones) and return {"layers.i.<name>": QuantizedWeight}.

    ``samples``: calibration token-id tensors (GPTQ only; RTN needs none).
    ``progress``: called with a description after each layer.
    """
    results = {}
    dtype = next(model.parameters()).dtype
    xs = [model.embed_tokens(ids) for ids in samples] if method == "gptq" else []
    cos_sins = [model.rotary.lookup(torch.arange(len(ids)), dtype) for ids in samples]
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            module = layer.get_submodule(name)
            if method == "gptq":
                qw = gptq(module.weight, hessian(layer, module, xs, cos_sins), cfg)
            else:
                qw = rtn(module.weight.double(), cfg)
            qw.scales = qw.scales.to(torch.float16).double()  # as the checkpoint stores them
            module.weight.copy_(qw.dequantize().to(dtype))
            results[f"layers.{i}.{name}"] = qw
        if method == "gptq":
            xs = [layer_forward(layer, x, cs) for x, cs in zip(xs, cos_sins)]
        if progress is not None:
            progress(f"layer {i + 1}/{len(model.layers)}")
    return results
