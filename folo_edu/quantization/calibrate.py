"""Quantize a DecoderModel layer by layer, as GPTQ does.

Calibration sequences run through the model one decoder layer at a time. Inside a
layer the four linear maps are quantized in the order the data meets them (q/k/v,
then o, then gate/up, then down); each one's Hessian H = 2 X Xᵀ is collected from
inputs that already went through the quantized maps before it, and the layer's outputs,
computed with all four quantized, are the next layer's inputs.

One pass per layer: ``layer_steps`` is the layer's forward written as a generator that
pauses before each linear map and hands out that map's input. ``quantize_model`` runs
every calibration sequence up to the first pause, quantizes q/k/v from what they
handed out, resumes them all to the next pause (the resumed forward now runs the
*quantized* q/k/v), and so on; the last resume returns the layer's output. Every piece
of the layer runs once per sequence, where collecting each map's inputs with a separate
forward (as GPTQ's reference code does) runs attention four times and the MLP twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from folo_edu.quantization.methods import QuantizedWeight, gptq, rtn
from folo_edu.quantization.quant_config import GPTQConfig

# Our fused linear maps, in the order the data meets them inside a decoder layer.
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _attention(layer, q, k, v) -> torch.Tensor:
    """Causal attention over one whole sequence (no KV cache): [T, H, D] -> [T, H * D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
        scale=layer.self_attn.scale, enable_gqa=True)
    return out.transpose(0, 1).flatten(1)


def layer_forward(layer, x: torch.Tensor, cos_sin) -> torch.Tensor:
    """One decoder layer over one whole sequence (causal attention, no KV cache), through
    the layer's own two halves."""
    q, k, v = layer.before_attention(x, cos_sin)
    return layer.after_attention(x, _attention(layer, q, k, v).unflatten(1, q.shape[1:]))


def layer_steps(layer, x: torch.Tensor, cos_sin):
    """The same forward as ``layer_forward``, paused before each linear map: yields
    ``(name, input)`` for the names of LINEARS in order, and returns the layer's output.

    The driver may change a map's weight while the generator is paused before it; the
    map then runs with the new weight. A test checks that, left alone, the output equals
    ``layer_forward``'s bit for bit.
    """
    attn, mlp = layer.self_attn, layer.mlp
    h = layer.input_layernorm(x)
    yield LINEARS[0], h
    a = _attention(layer, *attn.project(h, cos_sin))  # project() runs qkv_proj
    del h
    yield LINEARS[1], a
    x = x + attn.o_proj(a)
    del a
    h = layer.post_attention_layernorm(x)
    yield LINEARS[2], h
    gate, up = mlp.gate_up_proj(h).chunk(2, dim=-1)
    del h
    act = F.silu(gate) * up
    del gate, up
    yield LINEARS[3], act
    return x + mlp.down_proj(act)


def _resume(steps):
    """Advance every paused forward to its next pause: [(name, input)], or its output."""
    out = []
    for s in steps:
        try:
            out.append(next(s))
        except StopIteration as stop:
            out.append(stop.value)
    return out


def hessian_of(inputs: list[torch.Tensor], in_features: int) -> torch.Tensor:
    """H = 2/N Σ x xᵀ over every token of ``inputs`` ([T_i, in] each; [in, in], float64).

    Each sample's product is computed in float32 (as GPTQ's reference code does: several
    times faster than float64 on a CPU) and summed in float64.
    """
    h = torch.zeros(in_features, in_features, dtype=torch.float64)
    count = 0
    for inp in inputs:
        inp = inp.reshape(-1, in_features).float()
        h += (2 * inp.t() @ inp).double()
        count += inp.shape[0]
    return h / max(count, 1)


def hessian(layer, module, xs, cos_sins) -> torch.Tensor:
    """H of one linear map ``module`` of ``layer`` on layer inputs ``xs`` (one tensor per
    sequence): each sequence's forward runs up to that map only."""
    name = next(n for n in LINEARS if layer.get_submodule(n) is module)
    inputs = []
    for x, cs in zip(xs, cos_sins):
        inputs.append(next(inp for n, inp in layer_steps(layer, x, cs) if n == name))
    return hessian_of(inputs, module.in_features)


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
        if method == "gptq":  # every sequence's forward through this layer, paused at q/k/v
            steps = [layer_steps(layer, x, cs) for x, cs in zip(xs, cos_sins)]
            paused = _resume(steps)
        for name in LINEARS:
            module = layer.get_submodule(name)
            if method == "gptq":
                assert all(n == name for n, _ in paused)
                h = hessian_of([inp for _, inp in paused], module.in_features)
                del paused
                qw = gptq(module.weight, h, cfg)
            else:
                qw = rtn(module.weight.double(), cfg)
            qw.scales = qw.scales.to(torch.float16).double()  # as the checkpoint stores them
            module.weight.copy_(qw.dequantize().to(dtype))
            results[f"layers.{i}.{name}"] = qw
            if method == "gptq":  # on to the next map (quantized ones behind), or the end
                paused = _resume(steps)
        if method == "gptq":
            xs = paused  # the layer's outputs, all four maps quantized
        if progress is not None:
            progress(f"layer {i + 1}/{len(model.layers)}")
    return results
