"""Tiny random Llama, Qwen2 and Qwen3 checkpoints, built from a config, for tests.

They are saved as ordinary HF folders (config.json + model.safetensors), so every
test exercises the same loading path as a real checkpoint. Random weights give
random-looking tokens, which is what an equivalence test wants: any bug shows up.
"""
from __future__ import annotations

from pathlib import Path

import torch

# Named shapes that together cover tied/untied embeddings, GQA ratios 1/2/4,
# q/k/v bias (Qwen2), q_norm/k_norm with a head_dim that is not hidden/heads (Qwen3),
# and llama3-style rope scaling.
TINY_CONFIGS: dict[str, dict] = {
    "llama-gqa2-tied": dict(
        arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama-mha-untied-rope3": dict(
        arch="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2-bias-gqa4": dict(
        arch="qwen2", hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3-odd-headdim": dict(
        arch="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, tie_word_embeddings=True),
}


def tiny_hf_config(name: str = "llama-gqa2-tied", vocab_size: int = 256,
                   max_position_embeddings: int = 512, **overrides):
    """A transformers config for one of TINY_CONFIGS (overrides win)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    spec = dict(TINY_CONFIGS[name], **overrides)
    arch = spec.pop("arch")
    rope_scaling = spec.pop("rope_scaling", None)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    config = cls(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                 rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, **spec)
    if rope_scaling is not None:
        params = dict(rope_scaling, rope_theta=10000.0)
        if hasattr(config, "rope_parameters"):
            config.rope_parameters = params
        else:
            config.rope_scaling = rope_scaling
    config.architectures = [cls.__name__.replace("Config", "ForCausalLM")]
    return config


def make_tiny_model(path: str | Path, name: str = "llama-gqa2-tied", seed: int = 0,
                    dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Build a tiny random model and save it as a HF folder at ``path``; return the path."""
    from transformers import AutoModelForCausalLM

    config = tiny_hf_config(name, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Default init draws weights with std 0.02, which makes every logit nearly equal
    # and greedy ties likely. Wider weights give decisive, still random, tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
    path = Path(path)
    model.save_pretrained(path)
    return path
