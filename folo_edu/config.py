"""Engine configuration (M0): ModelConfig, CacheConfig, SchedulerConfig, EngineConfig.

Each class checks its own fields in ``__post_init__``; EngineConfig checks the rules
that span several of them. Every failure is a ValueError (TypeError for a wrong
type) that names the field, the value given and what is allowed.

Configs are plain data: they never open a checkpoint. Rules that need the checkpoint's
own config (its length limit, its KV bytes per token) run once the model layer has
attached it: ``folo_edu.models.loader.resolve_config(config)``, which the engine calls.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16,
          "float32": torch.float32, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")
KV_CACHE_KINDS = ("paged", "contiguous")
# The attention backends by name; folo_edu.attention checks its registry against this list
# and says whether each can run here (config never imports the layers it configures).
ATTENTION_BACKENDS = ("auto", "naive", "sdpa", "paged-torch", "flex", "triton", "numba")
# Who multiplies a step's few decode rows by the weights: torch, or our CPU kernel
# (folo_edu.models.numba_linear); "auto" = numba on a CPU when it is installed.
LINEAR_BACKENDS = ("auto", "torch", "numba")
# KV cache budget when neither num_kv_blocks nor kv_cache_memory_bytes is given.
DEFAULT_CPU_KV_BYTES = 1 << 30


def _bad(cls: str, name: str, value: Any, allowed: str, exc=ValueError):
    return exc(f"{cls}.{name}={value!r}: expected {allowed}")


def _int_field(cls, name, value, lo, allowed, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(cls, name, value, allowed, TypeError)
    if value < lo:
        raise _bad(cls, name, value, allowed)


def _bool_field(cls, name, value):
    if not isinstance(value, bool):
        raise _bad(cls, name, value, "a bool", TypeError)


def _choice(cls, name, value, choices):
    if value not in choices:
        raise _bad(cls, name, value, "one of " + ", ".join(map(repr, choices)))


def resolve_device(device: str) -> torch.device:
    """"auto" means cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("ModelConfig.device='cuda': no CUDA device is available; "
                         "expected 'cpu' or 'auto' on this machine")
    return torch.device(device)


@dataclass
class ModelConfig:
    """Which checkpoint to run, in which dtype, on which device, up to which length.

    ``model`` is a local HF folder, a .gguf file, a hub id, or None for the default
    model. Building this only checks the fields; ``resolve_config`` (models layer)
    finds the checkpoint and attaches its folder and HF config with ``attach``.
    """

    model: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    device: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    skip_tokenizer_init: bool = False
    # Set by attach() once the checkpoint is found:
    path: str = field(init=False, default="")
    hf_config: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        if self.model is not None and not isinstance(self.model, str):
            raise _bad("ModelConfig", "model", self.model,
                       "a str (folder, .gguf file or hub id) or None", TypeError)
        _choice("ModelConfig", "dtype", self.dtype, ("auto", *DTYPES))
        _choice("ModelConfig", "device", self.device, DEVICES)
        resolve_device(self.device)  # fail now, not at the first forward pass
        _int_field("ModelConfig", "seed", self.seed, 0, "an int >= 0")
        if self.trust_remote_code:
            raise _bad("ModelConfig", "trust_remote_code", True,
                       "False: folo_edu runs its own decoder and never executes checkpoint code")
        _int_field("ModelConfig", "max_model_len", self.max_model_len, 1,
                   "an int >= 1 or None", optional=True)

    def attach(self, path: str, hf_config) -> None:
        """Record the checkpoint's folder and HF config; check max_model_len against it."""
        limit = hf_config.max_position_embeddings
        allowed = f"an int in [1, {limit}] (the checkpoint's max_position_embeddings)"
        if self.max_model_len is not None and self.max_model_len > limit:
            raise _bad("ModelConfig", "max_model_len", self.max_model_len, allowed)
        self.path, self.hf_config = str(path), hf_config
        if self.max_model_len is None:
            self.max_model_len = limit

    @property
    def resolved(self) -> bool:
        return self.hf_config is not None

    def _require_resolved(self, what: str) -> None:
        if self.hf_config is None:
            raise RuntimeError(f"ModelConfig.{what} needs the checkpoint's config; call "
                               "folo_edu.models.loader.resolve_config(config) first")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """auto: float32 on CPU; on CUDA the checkpoint's dtype, with float32 -> bf16/fp16."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.torch_device.type == "cpu":
            return torch.float32
        self._require_resolved("torch_dtype")
        ckpt = getattr(self.hf_config, "dtype", None) or getattr(self.hf_config, "torch_dtype", None)
        ckpt = DTYPES.get(str(ckpt).replace("torch.", ""), torch.float32)
        if ckpt in (torch.float32, torch.float64):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return ckpt

    @property
    def head_dim(self) -> int:
        self._require_resolved("head_dim")
        c = self.hf_config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        self._require_resolved("num_kv_heads")
        c = self.hf_config
        return getattr(c, "num_key_value_heads", None) or c.num_attention_heads

    @property
    def num_layers(self) -> int:
        self._require_resolved("num_layers")
        return self.hf_config.num_hidden_layers

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token takes across all layers."""
        elem = torch.tensor([], dtype=self.torch_dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


@dataclass
class CacheConfig:
    """The KV cache: its layout, block size, and how big it is.

    ``kv_cache="paged"`` splits it into blocks of ``block_size`` tokens handed out
    on demand; ``"contiguous"`` reserves max_model_len tokens per running request.
    Size it with ``num_kv_blocks`` or, failing that, ``kv_cache_memory_bytes``.
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    kv_cache: str = "paged"
    enable_prefix_caching: bool | None = None  # None: True when paged, False when contiguous

    def __post_init__(self) -> None:
        _int_field("CacheConfig", "block_size", self.block_size, 1, "an int >= 1")
        _int_field("CacheConfig", "num_kv_blocks", self.num_kv_blocks, 1,
                   "an int >= 1 or None", optional=True)
        _int_field("CacheConfig", "kv_cache_memory_bytes", self.kv_cache_memory_bytes, 1,
                   "an int >= 1 (bytes) or None", optional=True)
        _choice("CacheConfig", "kv_cache", self.kv_cache, KV_CACHE_KINDS)
        if self.enable_prefix_caching is None:  # on with the paged cache, as in vLLM v1
            self.enable_prefix_caching = self.kv_cache == "paged"
        _bool_field("CacheConfig", "enable_prefix_caching", self.enable_prefix_caching)
        if self.enable_prefix_caching and self.kv_cache == "contiguous":
            raise _bad("CacheConfig", "enable_prefix_caching", True,
                       "False with kv_cache='contiguous' (requests share cached prefixes "
                       "block by block, and a contiguous cache has one block per request)")


@dataclass
class SchedulerConfig:
    """How much work one engine step may take on.

    ``max_num_seqs`` caps the requests in one step, ``max_num_batched_tokens`` the
    tokens. With chunked prefill (the default) a long prompt runs over several steps;
    without it a whole prompt must fit in one step, so the token budget must be at least
    max_model_len (refused at construction otherwise, as vLLM does, so nothing can
    wait forever). ``long_prefill_token_threshold`` caps one prompt's tokens per step.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    # vLLM's name: at most this many prompt tokens of one request per step (0 = no cap).
    long_prefill_token_threshold: int = 0

    def __post_init__(self) -> None:
        _int_field("SchedulerConfig", "max_num_seqs", self.max_num_seqs, 1, "an int >= 1")
        _int_field("SchedulerConfig", "max_num_batched_tokens", self.max_num_batched_tokens, 1,
                   "an int >= 1 or None", optional=True)
        _bool_field("SchedulerConfig", "enable_chunked_prefill", self.enable_chunked_prefill)
        _int_field("SchedulerConfig", "long_prefill_token_threshold",
                   self.long_prefill_token_threshold, 0, "an int >= 0 (0 = no cap)")
        if self.long_prefill_token_threshold and not self.enable_chunked_prefill:
            raise _bad("SchedulerConfig", "long_prefill_token_threshold",
                       self.long_prefill_token_threshold,
                       "0 when enable_chunked_prefill is False (capping a prompt's tokens "
                       "per step is chunking)")


@dataclass
class EngineConfig:
    """Everything the engine needs, with the checks that span several configs."""

    model_config: ModelConfig
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    attention_backend: str = "auto"
    linear_backend: str = "auto"
    # False: decode steps replay CUDA graphs where the device and backend allow it.
    enforce_eager: bool = False
    # True: torch.compile the dense per-layer work (norms, projections, MLP) and flex.
    torch_compile: bool = False

    def __post_init__(self) -> None:
        _choice("EngineConfig", "attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("EngineConfig", "linear_backend", self.linear_backend, LINEAR_BACKENDS)
        _bool_field("EngineConfig", "enforce_eager", self.enforce_eager)
        _bool_field("EngineConfig", "torch_compile", self.torch_compile)
        sc = self.scheduler_config
        if sc.max_num_batched_tokens is not None and sc.max_num_batched_tokens < sc.max_num_seqs:
            raise ValueError(
                f"SchedulerConfig.max_num_batched_tokens={sc.max_num_batched_tokens}: expected "
                f">= max_num_seqs={sc.max_num_seqs} (every running request needs a token)")
        if self.model_config.resolved:
            self.finalize()

    def finalize(self) -> None:
        """The rules that need the checkpoint (its max_model_len and KV size); fills the
        token budget and the number of KV blocks. Runs once the model config is attached."""
        mc, cc, sc = self.model_config, self.cache_config, self.scheduler_config
        mc._require_resolved("max_model_len")
        if sc.max_num_batched_tokens is None:
            sc.max_num_batched_tokens = (2048 if sc.enable_chunked_prefill
                                         else max(mc.max_model_len, 2048))
        if not sc.enable_chunked_prefill and sc.max_num_batched_tokens < mc.max_model_len:
            raise ValueError(
                f"SchedulerConfig.max_num_batched_tokens={sc.max_num_batched_tokens}: expected "
                f">= max_model_len={mc.max_model_len} when enable_chunked_prefill is False "
                "(a whole prompt must fit in one step); raise it, lower max_model_len, "
                "or enable chunked prefill")
        if sc.max_num_batched_tokens < sc.max_num_seqs:
            raise ValueError(
                f"SchedulerConfig.max_num_batched_tokens={sc.max_num_batched_tokens}: expected "
                f">= max_num_seqs={sc.max_num_seqs} (every running request needs a token)")
        if cc.num_kv_blocks is None:
            per_block = self.kv_bytes_per_block
            budget = cc.kv_cache_memory_bytes or self._default_kv_bytes()
            cc.num_kv_blocks = budget // per_block
            if cc.num_kv_blocks < 1:
                raise ValueError(
                    f"CacheConfig.kv_cache_memory_bytes={budget}: expected >= {per_block}, "
                    f"the size of one KV block ({self.tokens_per_block} tokens)")

    @property
    def tokens_per_block(self) -> int:
        """Tokens in one KV block: block_size when paged, max_model_len when contiguous."""
        if self.cache_config.kv_cache == "contiguous":
            return self.model_config.max_model_len
        return self.cache_config.block_size

    @property
    def kv_bytes_per_block(self) -> int:
        return self.tokens_per_block * self.model_config.kv_bytes_per_token()

    def _default_kv_bytes(self) -> int:
        device = self.model_config.torch_device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free * 0.5)
        return DEFAULT_CPU_KV_BYTES

    @classmethod
    def from_kwargs(cls, model=None, *, dtype="auto", max_model_len=None, device="auto",
                    seed=0, trust_remote_code=False, skip_tokenizer_init=False,
                    block_size=16, num_kv_blocks=None, kv_cache_memory_bytes=None,
                    kv_cache="paged", enable_prefix_caching=None, max_num_seqs=64,
                    max_num_batched_tokens=None, enable_chunked_prefill=True,
                    long_prefill_token_threshold=0,
                    attention_backend="auto", linear_backend="auto", enforce_eager=False,
                    torch_compile=False) -> "EngineConfig":
        """Build all four configs from the flat keyword arguments ``LLM`` takes (plain
        data: the checkpoint is read later, by ``resolve_config``)."""
        return cls(
            ModelConfig(model, dtype, max_model_len, device, seed, trust_remote_code,
                        skip_tokenizer_init),
            CacheConfig(block_size, num_kv_blocks, kv_cache_memory_bytes, kv_cache,
                        enable_prefix_caching),
            SchedulerConfig(max_num_seqs, max_num_batched_tokens, enable_chunked_prefill,
                            long_prefill_token_threshold),
            attention_backend, linear_backend, enforce_eager, torch_compile)
