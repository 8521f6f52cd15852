"""Load a checkpoint's safetensors straight into our DecoderModel.

The model is first built on the "meta" device (shapes only, no memory, no random
init), then given real storage and filled tensor by tensor. HF keeps q/k/v and
gate/up as separate matrices; we concatenate each group into one fused matmul.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from folo_edu.models.decoder import DecoderModel, DecoderSpec
from folo_edu.models.loader import ModelSourceError

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


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the *.safetensors files in a folder, by HF name."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - a corrupt file raises many kinds
            raise ModelSourceError(f"weights file {str(file)!r} could not be read as "
                                   f"safetensors: {type(e).__name__}: {e}") from e
    return tensors


def load_model(path: str | Path, hf_config, backend, dtype: torch.dtype,
               device: torch.device) -> DecoderModel:
    """Build a DecoderModel for ``hf_config`` and fill it from the checkpoint at ``path``."""
    spec = DecoderSpec(hf_config)
    with torch.device("meta"):
        model = DecoderModel(spec, backend)
    model.to_empty(device=device)
    model.to(dtype)
    params = dict(model.named_parameters())
    groups: dict[str, dict[int, torch.Tensor]] = {}
    loaded: set[str] = set()
    for hf_name, tensor in read_checkpoint(path).items():
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
        expected = 3 if "qkv_proj" in name else 2
        if len(parts) != expected:
            raise ModelSourceError(f"checkpoint {str(path)!r}: {name} needs {expected} parts, "
                                   f"found {sorted(parts)}")
        _copy(params[name], torch.cat([parts[i] for i in range(expected)]), name)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelSourceError(f"checkpoint {str(path)!r}: missing tensor(s) {missing[:5]}"
                               f"{' ...' if len(missing) > 5 else ''}")
    model.init_rotary(device)
    return model.eval()


def _copy(param: torch.nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise ModelSourceError(f"tensor {name!r} has shape {tuple(tensor.shape)}; the config "
                               f"expects {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor)
