"""Attention backends, selectable by name (``LLM(attention_backend=...)``).

    naive        softmax(QKᵀ)V one sequence at a time: the reference every other is tested against
    sdpa         torch's fused scaled_dot_product_attention; decodes gathered in length groups
    paged-torch  PagedAttention (tiles + online softmax) in plain torch: the kernel's reference
    flex         FlexAttention over the paged cache with a BlockMask from the block tables
    triton       our Triton kernels: store K/V by slot, paged decode attention; CUDA-graph safe
    numba        our CPU PagedAttention decode kernel (Numba): reads K/V in place, no gather

Every backend computes prefills with SDPA except naive; they differ in how decodes
read the cache.
"""
from folo_edu.attention.common import AttentionBackend
from folo_edu.attention.flex import FlexBackend, flex_unavailable_reason
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.naive import NaiveBackend
from folo_edu.attention.numba_backend import NumbaBackend, numba_unavailable_reason
from folo_edu.attention.paged_torch import PagedTorchBackend
from folo_edu.attention.sdpa import SdpaBackend
from folo_edu.attention.triton_backend import TritonBackend, triton_unavailable_reason

from folo_edu.attention.storage import allocate_kv_cache
from folo_edu.config import ATTENTION_BACKENDS

BACKENDS = {"naive": NaiveBackend, "sdpa": SdpaBackend, "paged-torch": PagedTorchBackend,
            "flex": FlexBackend, "triton": TritonBackend, "numba": NumbaBackend}
assert ("auto", *BACKENDS) == ATTENTION_BACKENDS, "config.ATTENTION_BACKENDS is out of date"


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run in this Python environment, or None if it can."""
    if name == "flex":
        return flex_unavailable_reason()
    if name == "triton":
        return triton_unavailable_reason()
    if name == "numba":
        return numba_unavailable_reason()
    return None


def available_backends() -> list[str]:
    return [name for name in BACKENDS if unavailable_reason(name) is None]


def require_available(name: str) -> None:
    """Raise a ValueError naming EngineConfig.attention_backend if ``name`` can't run here."""
    reason = unavailable_reason(name)
    if reason:
        raise ValueError(
            f"EngineConfig.attention_backend={name!r}: {reason}; "
            f"expected one that runs here: {', '.join(map(repr, available_backends()))}")


def _device_type(device) -> str:
    """"cuda" or "cpu" from a torch.device, a string, or None (cpu)."""
    return getattr(device, "type", device) or "cpu"


def resolve_backend_name(name: str, device) -> str:
    """"auto": triton on CUDA and numba on a CPU when they are installed, else sdpa.

    On a CPU, numba's kernel reads the paged cache in place; sdpa copies it into a
    padded batch first. triton only runs in its (slow) interpreter there, and flex needs
    a torch.compile of tens of seconds before it pays off.
    """
    if name != "auto":
        return name
    if _device_type(device) == "cuda":
        return "triton" if unavailable_reason("triton") is None else "sdpa"
    return "numba" if unavailable_reason("numba") is None else "sdpa"


def get_backend(name: str = "auto", device=None, compile: bool = False) -> AttentionBackend:
    """A backend instance. compile=True compiles what can be compiled (flex)."""
    name = resolve_backend_name(name, device)
    if name not in BACKENDS:
        raise ValueError(f"attention_backend={name!r}: expected 'auto' or one of "
                         f"{', '.join(map(repr, BACKENDS))}")
    reason = unavailable_reason(name)
    if reason:
        raise ValueError(f"attention_backend={name!r} cannot run here: {reason}")
    if name == "flex":
        if compile and _device_type(device) == "cpu":
            # Measured on a 2-core EPYC: 17-75 s of compiling per decode batch size
            # (every power of two up to max_num_seqs), before the first token.
            raise ValueError(
                "attention_backend='flex' with torch_compile=True on a CPU: compiling "
                "FlexAttention's CPU kernel takes tens of seconds for each decode batch "
                "size, so a run spends minutes compiling; expected attention_backend="
                "'numba' (the CPU default: a kernel that also reads the paged cache in "
                "place), or 'flex' without torch_compile (a dense reference for small caches)")
        return FlexBackend(compile=compile or _device_type(device) == "cuda")
    return BACKENDS[name]()


__all__ = ["AttentionBackend", "AttentionMetadata", "BACKENDS", "allocate_kv_cache",
           "available_backends", "get_backend", "require_available", "resolve_backend_name",
           "unavailable_reason"]
