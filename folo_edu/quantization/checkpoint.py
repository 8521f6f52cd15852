"""Write and read GPTQ checkpoints in the Hugging Face layout.

Writing: our fused q/k/v and gate/up maps are split back into HF's q_proj, k_proj,
v_proj, gate_proj and up_proj, each packed (packing.py); everything else is stored in
float as it was; config.json gains ``quantization_config``; tokenizer files are copied.
Reading: ``quantized_modules`` builds QuantLinear modules for the decoder from those
tensors (fusing them back), checking every name and shape first.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from folo_edu.quantization.linear import QuantLinear
from folo_edu.quantization.methods import QuantizedWeight
from folo_edu.quantization.packing import pack_gptq
from folo_edu.quantization.quant_config import GPTQConfig

# Our fused map -> the HF maps it joins (output rows in this order).
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",), "mlp.down_proj": ("mlp.down_proj",)}
PACKED = ("qweight", "qzeros", "scales", "g_idx")


def _split_rows(qw: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    qs = qw.q.split(sizes, dim=0)
    ss, zs = qw.scales.split(sizes, dim=1), qw.zeros.split(sizes, dim=1)
    return [QuantizedWeight(q, s, z, qw.g_idx) for q, s, z in zip(qs, ss, zs)]


def _part_sizes(model, fused: str) -> list[int]:
    attn, spec = model.layers[0].self_attn, model.spec
    if fused == "self_attn.qkv_proj":
        return [attn.q_size, attn.kv_size, attn.kv_size]
    if fused == "mlp.gate_up_proj":
        return [spec.intermediate_size, spec.intermediate_size]
    return [model.layers[0].get_submodule(fused).out_features]


def save_gptq_checkpoint(model, quantized: dict[str, QuantizedWeight], cfg: GPTQConfig,
                         source: str | Path, out_dir: str | Path) -> Path:
    """Write ``model`` (its unquantized tensors) and ``quantized`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        layer_name = name.rsplit(".", 1)[0]
        if layer_name.split(".", 2)[-1] in FUSED and name.endswith(".weight"):
            continue  # stored quantized below
        if name.endswith("qkv_proj.bias"):
            for part, b in zip(FUSED["self_attn.qkv_proj"],
                               param.split(_part_sizes(model, "self_attn.qkv_proj"))):
                tensors[f"model.{layer_name.rsplit('.', 1)[0]}.{part.split('.')[1]}.bias"] = b
            continue
        hf = "lm_head.weight" if name == "lm_head.weight" else f"model.{name}"
        tensors[hf] = param.detach()
    for key, qw in quantized.items():  # key: layers.i.<fused name>
        prefix, fused = key.split(".", 2)[:2], key.split(".", 2)[2]
        parts = _split_rows(qw, _part_sizes(model, fused))
        for hf_part, part in zip(FUSED[fused], parts):
            packed = pack_gptq(part.q.long(), part.scales, part.zeros, part.g_idx, cfg.bits)
            for t, v in packed.items():
                tensors[f"model.{'.'.join(prefix)}.{hf_part}.{t}"] = v
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    src = Path(source)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = cfg.to_hf()
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():  # tokenizer, chat template, generation config
        if f.is_file() and f.suffix != ".safetensors" and f.name not in (
                "config.json", "model.safetensors.index.json"):
            shutil.copy2(f, out / f.name)
    return out


def quantized_modules(spec, cfg: GPTQConfig, state: dict[str, torch.Tensor], where: str
                      ) -> dict[str, QuantLinear]:
    """{our module name: QuantLinear filled from the HF tensors}, for every layer.

    Raises ValueError naming the tensor, its shape and the expected one when the
    checkpoint does not match its config. Consumes the tensors it uses from ``state``.
    """
    sizes = {"self_attn.qkv_proj": ([spec.num_heads * spec.head_dim] + 2 *
                                    [spec.num_kv_heads * spec.head_dim], spec.hidden_size),
             "self_attn.o_proj": ([spec.hidden_size], spec.num_heads * spec.head_dim),
             "mlp.gate_up_proj": ([spec.intermediate_size] * 2, spec.hidden_size),
             "mlp.down_proj": ([spec.hidden_size], spec.intermediate_size)}
    modules = {}
    for i in range(spec.num_layers):
        for fused, (outs, in_f) in sizes.items():
            parts = []
            for hf_part, out_f in zip(FUSED[fused], outs):
                base = f"model.layers.{i}.{hf_part}"
                expected = {"qweight": (in_f * cfg.bits // 32, out_f),
                            "qzeros": (cfg.num_groups(in_f), out_f * cfg.bits // 32),
                            "scales": (cfg.num_groups(in_f), out_f), "g_idx": (in_f,)}
                part = {}
                for t, shape in expected.items():
                    tensor = state.pop(f"{base}.{t}", None)
                    if tensor is None:
                        raise ValueError(f"checkpoint {where!r}: tensor {base}.{t} is missing; "
                                         f"expected shape {shape} (quantization_config bits="
                                         f"{cfg.bits}, group_size={cfg.group_size})")
                    if tuple(tensor.shape) != shape:
                        raise ValueError(f"checkpoint {where!r}: tensor {base}.{t} has shape "
                                         f"{tuple(tensor.shape)}; expected {shape} for bits="
                                         f"{cfg.bits}, group_size={cfg.group_size}")
                    part[t] = tensor
                part["bias"] = state.pop(f"{base}.bias", None)
                parts.append(part)
            if any(not torch.equal(p["g_idx"], parts[0]["g_idx"]) for p in parts):
                raise ValueError(f"checkpoint {where!r}: {FUSED[fused]} of layer {i} have "
                                 "different g_idx; expected one order for maps that share "
                                 "their input")
            has_bias = parts[0]["bias"] is not None
            module = QuantLinear(in_f, sum(outs), cfg, bias=has_bias)
            with torch.no_grad():
                module.qweight.copy_(torch.cat([p["qweight"] for p in parts], dim=1))
                module.qzeros.copy_(torch.cat([p["qzeros"] for p in parts], dim=1))
                module.scales.copy_(torch.cat([p["scales"] for p in parts], dim=1))
                module.g_idx.copy_(parts[0]["g_idx"])
                if has_bias:
                    module.bias.copy_(torch.cat([p["bias"] for p in parts]))
            modules[f"layers.{i}.{fused}"] = module
    return modules
