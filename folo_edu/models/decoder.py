"""One decoder for the Llama family: Llama (SmolLM2), Qwen2 and Qwen3.

The three differ in two switches, both read from the checkpoint's config:
  q/k/v bias       Qwen2 (and Llama configs with attention_bias=True)
  q_norm / k_norm  Qwen3: an RMSNorm over each head of q and k, before RoPE

The model never knows what a request is. It gets a flat batch of tokens, their
positions, and an AttentionMetadata saying where their K/V live in the cache.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.models.layers import (Linear, RMSNorm, RotaryEmbedding, SwiGLUMLP, apply_rope,
                                    linear, rope_parameters)


class DecoderSpec:
    """The shape of a decoder, read once from a transformers config."""

    def __init__(self, hf_config):
        c = hf_config
        self.arch = (c.architectures or ["?"])[0]
        self.vocab_size = c.vocab_size
        self.hidden_size = c.hidden_size
        self.intermediate_size = c.intermediate_size
        self.num_layers = c.num_hidden_layers
        self.num_heads = c.num_attention_heads
        self.num_kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.rms_norm_eps = c.rms_norm_eps
        self.max_position = c.max_position_embeddings
        self.rope = rope_parameters(c)
        self.tie_word_embeddings = bool(getattr(c, "tie_word_embeddings", False))
        self.qkv_bias = self.arch == "Qwen2ForCausalLM" or bool(getattr(c, "attention_bias", False))
        self.qk_norm = self.arch == "Qwen3ForCausalLM"
        if getattr(c, "mlp_bias", False):
            raise ValueError(f"{self.arch}: mlp_bias=True is not supported; expected False")
        if getattr(c, "use_sliding_window", False):
            raise ValueError(f"{self.arch}: use_sliding_window=True is not supported; "
                             "expected False")
        if getattr(c, "hidden_act", "silu") != "silu":
            raise ValueError(f"{self.arch}: hidden_act={c.hidden_act!r} is not supported; "
                             "expected 'silu'")


class Attention(nn.Module):
    """Grouped-query self-attention whose K/V live in the (paged) KV cache."""

    def __init__(self, spec: DecoderSpec, backend):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            spec.num_heads, spec.num_kv_heads, spec.head_dim)
        self.q_size = spec.num_heads * spec.head_dim
        self.kv_size = spec.num_kv_heads * spec.head_dim
        self.qkv_proj = Linear(spec.hidden_size, self.q_size + 2 * self.kv_size,
                               bias=spec.qkv_bias)
        self.o_proj = Linear(self.q_size, spec.hidden_size, bias=False)
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
        self.scale = spec.head_dim ** -0.5
        self.backend = backend
        # Set by the model runner: this layer's slice of the KV cache.
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def project(self, x, cos_sin):
        """x [T, hidden] -> q [T, H, D], k and v [T, KVH, D], with q/k norm and RoPE applied."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return (*apply_rope(q, k, cos_sin), v)

    def attend(self, q, k, v, meta: AttentionMetadata) -> torch.Tensor:
        """Store k, v in the cache, then attend: [T, H, D] (before o_proj)."""
        self.backend.write_kv(self.k_cache, self.v_cache, k, v, meta.slot_mapping)
        return self.backend.forward(q, self.k_cache, self.v_cache, meta, self.scale, k, v)


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, backend):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, backend)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = SwiGLUMLP(spec.hidden_size, spec.intermediate_size)

    def forward(self, x, meta, cos_sin):
        q, k, v = self.before_attention(x, cos_sin)
        return self.after_attention(x, self.self_attn.attend(q, k, v, meta))

    # The two dense halves of a layer, around the attention call. They see only
    # tensors whose shapes vary with the token count, so torch.compile can take them
    # (DecoderModel.compile_dense); attention itself reads per-step Python metadata.
    def before_attention(self, x, cos_sin):
        return self.self_attn.project(self.input_layernorm(x), cos_sin)

    def after_attention(self, x, attn):
        x = x + self.self_attn.o_proj(attn.flatten(1))
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Embedding -> N decoder layers -> final norm -> LM head (tied or not)."""

    def __init__(self, spec: DecoderSpec, backend):
        super().__init__()
        self.spec = spec
        # Built on the meta device (by the loader, which fills every tensor), Embedding is
        # given its weight so it skips the random init: that normal_() on meta imports
        # torch._dynamo, 1.4 s of a server's start-up. Elsewhere it initializes as usual.
        shape = (spec.vocab_size, spec.hidden_size)
        on_meta = torch.empty(0).device.type == "meta"
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape) if on_meta else None)
        self.layers = nn.ModuleList(DecoderLayer(spec, backend) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        if not spec.tie_word_embeddings:
            self.lm_head = Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.rotary: RotaryEmbedding | None = None  # built by init_rotary, off the meta device
        self.linear_kernel = None  # None: torch; see set_linear_kernel

    def init_rotary(self, device) -> None:
        s = self.spec
        self.rotary = RotaryEmbedding(s.head_dim, s.max_position, s.rope).to(device)

    def set_attention_backend(self, backend) -> None:
        for layer in self.layers:
            layer.self_attn.backend = backend

    def set_linear_kernel(self, kernel) -> None:
        """Route the few-row calls of every Linear map and the LM head through ``kernel``
        (e.g. numba_linear.SkinnyMatmul); None restores torch's F.linear everywhere."""
        self.linear_kernel = kernel
        for module in self.modules():
            if isinstance(module, Linear):
                module.matmul = kernel

    def threads_for_step(self, num_tokens: int):
        """The thread context of one forward pass of ``num_tokens`` tokens: the kernel's
        (torch's threads lent to it) when it runs every linear map of the step, else none.
        A GPTQ model's quantized maps (M7) run torch ops and keep torch's threads."""
        maps = [m for layer in self.layers for m in (
            layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
            layer.mlp.down_proj)]
        if self.linear_kernel is None or not all(isinstance(m, Linear) for m in maps):
            return nullcontext()
        return self.linear_kernel.threads_for_step(num_tokens)

    def compile_dense(self) -> None:
        """torch.compile each layer's dense halves (dynamic in the token count)."""
        for layer in self.layers:
            layer.before_attention = torch.compile(layer.before_attention, dynamic=True)
            layer.after_attention = torch.compile(layer.after_attention, dynamic=True)

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T] -> hidden states [T, hidden] (before the final norm)."""
        x = self.embed_tokens(input_ids)
        cos_sin = self.rotary.lookup(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, meta, cos_sin)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head, for just the rows whose next token we want."""
        weight = self.embed_tokens.weight if self.spec.tie_word_embeddings else self.lm_head.weight
        return linear(self.norm(hidden), weight, kernel=self.linear_kernel)
