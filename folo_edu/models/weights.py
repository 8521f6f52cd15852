"""Load a checkpoint's safetensors straight into our DecoderModel.

The model is first built on the "meta" device (shapes only, no memory, no random
init), then given real storage and filled tensor by tensor. HF keeps q/k/v and
gate/up as separate matrices; we concatenate each group into one fused matmul.
"""
from __future__ import annotations

from pathlib import Path

import torch

from folo_edu.models.decoder import DecoderModel, DecoderSpec
from folo_edu.models.loader import ModelSourceError, load_safetensors_state

# Tensors a checkpoint may carry that we deliberately do not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _our_name_for(hf_name: str) -> tuple[str, int | None]:
    """Map an HF tensor name to (our parameter name, index within a fused group)."""
    name = hf_name.removeprefix("model.")
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        if f"self_attn.{part}." in name:
            return name.replace(part, "qkv_proj"), i
    for i, part in enumerate(("gate_proj", "up_proj")):
        if f"mlp.{part}." in name:
            return name.replace(part, "gate_up_proj"), i
    return name, None


def load_model(path: str | Path, hf_config, backend, dtype: torch.dtype,
               device: torch.device) -> DecoderModel:
    """Build a DecoderModel for ``hf_config`` and fill it from the checkpoint at ``path``."""
    spec = DecoderSpec(hf_config)
    with torch.device("meta"):
        model = DecoderModel(spec, backend)
    model.to_empty(device=device)
    model.to(dtype)
    state = load_safetensors_state(path)
    quant = getattr(hf_config, "quantization_config", None)
    done: tuple[str, ...] = ()
    if quant:  # a GPTQ checkpoint: its linear maps become QuantLinear modules (M7)
        done = tuple(m + "." for m in
                     _install_quantized(model, spec, quant, state, str(path), dtype, device))
    params = {n: p for n, p in model.named_parameters() if not n.startswith(done)}
    groups: dict[str, dict[int, torch.Tensor]] = {}
    loaded: set[str] = set()
    for hf_name, tensor in state.items():
        if hf_name.endswith(_IGNORED_SUFFIXES):
            continue
        if hf_name == "lm_head.weight" and spec.tie_word_embeddings:
            continue  # tied: the LM head is the embedding matrix
        name, index = _our_name_for(hf_name)
        if name not in params:
            raise ModelSourceError(f"checkpoint {str(path)!r}: tensor {hf_name!r} has no place "
                                   f"in a {spec.arch} with this config")
        if index is None:
            _copy(params[name], tensor, hf_name)
            loaded.add(name)
        else:
            groups.setdefault(name, {})[index] = tensor
    for name, parts in groups.items():
        members = ("q_proj", "k_proj", "v_proj") if "qkv_proj" in name else ("gate_proj", "up_proj")
        absent = [i for i in range(len(members)) if i not in parts]
        if absent:
            hf = "model." + name.replace(name.split(".")[-2], members[absent[0]])
            raise ModelSourceError(f"checkpoint {str(path)!r}: missing tensor {hf!r} "
                                   f"(part of our fused {name})")
        _copy(params[name], torch.cat([parts[i] for i in range(len(members))]), name)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelSourceError(f"checkpoint {str(path)!r}: missing tensor(s) {missing[:5]}"
                               f"{' ...' if len(missing) > 5 else ''}")
    model.init_rotary(device)
    return model.eval()


def _install_quantized(model, spec, quant: dict, state: dict, where: str, dtype,
                       device) -> list[str]:
    """Replace every decoder layer's linear maps by QuantLinear modules built from the
    checkpoint's GPTQ tensors (which are taken out of ``state``); return their names."""
    from folo_edu.quantization.checkpoint import quantized_modules
    from folo_edu.quantization.quant_config import GPTQConfig

    try:
        modules = quantized_modules(spec, GPTQConfig.from_hf(dict(quant)), state, where)
    except (TypeError, ValueError) as e:
        raise ModelSourceError(f"checkpoint {where!r}: {e}") from e
    for name, module in modules.items():
        parent_name, child = name.rsplit(".", 1)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
        module = module.to(device)
        module.use_kernel(dtype)
        setattr(model.get_submodule(parent_name), child, module)
    return list(modules)


def _copy(param: torch.nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise ModelSourceError(f"tensor {name!r} has shape {tuple(tensor.shape)}; the config "
                               f"expects {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor)
