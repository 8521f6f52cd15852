"""Attention backends, selectable by name (``LLM(attention_backend=...)``)."""
from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.attention.naive import NaiveBackend
from folo_edu.attention.sdpa import SdpaBackend

BACKENDS = {"naive": NaiveBackend, "sdpa": SdpaBackend}


def get_backend(name: str, device=None):
    """Return a backend instance; "auto" picks the fastest one for the device."""
    if name == "auto":
        name = "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"attention_backend={name!r}: expected 'auto' or one of "
                         f"{', '.join(map(repr, BACKENDS))}")
    return BACKENDS[name]()


__all__ = ["AttentionMetadata", "BACKENDS", "get_backend"]
