"""Memory of a model at inference: weights vs KV cache, as context grows (M0).

Pure functions compute the numbers; ``plot_memory_vs_context`` only draws them.
Weights cost the same whatever the context; the KV cache grows by
``kv_bytes_per_token`` for every token of every running sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from folo_edu.viz._plot import new_ax


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a checkpoint that decide its memory.

    ``num_params`` counts every parameter (tied embeddings once). Bytes per element
    are 2 for bf16/fp16 and 4 for fp32; weights and KV may differ.
    """

    name: str
    num_params: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    weight_bytes_per_param: int = 2
    kv_bytes_per_elem: int = 2


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                       bytes_per_elem: int = 2) -> int:
    """Bytes of K and V that one token adds to the cache, across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_elem


def weight_bytes(shape: ModelShape) -> int:
    """Bytes the weights take."""
    return int(shape.num_params * shape.weight_bytes_per_param)


def memory_vs_context(shape: ModelShape, context_lens, num_seqs: int = 1) -> dict:
    """Weights, KV cache and total bytes at each context length, for ``num_seqs`` sequences.

    Returns numpy arrays under "context", "weights", "kv" and "total".
    """
    context = np.asarray(context_lens, dtype=np.int64)
    if (context < 0).any() or num_seqs < 1:
        raise ValueError(f"context_lens must be >= 0 and num_seqs={num_seqs!r} >= 1")
    per_token = kv_bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                                   shape.kv_bytes_per_elem)
    kv = context * per_token * num_seqs
    weights = np.full_like(kv, weight_bytes(shape))
    return {"context": context, "weights": weights, "kv": kv, "total": weights + kv}


def crossover_context(shape: ModelShape, num_seqs: int = 1) -> int:
    """The smallest context length at which the KV cache is at least as big as the weights."""
    per_token = kv_bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                                   shape.kv_bytes_per_elem) * num_seqs
    return -(-weight_bytes(shape) // per_token)  # ceiling division


def plot_memory_vs_context(shapes: list[ModelShape], max_context: int = 32768,
                           num_seqs: int = 1, ax=None):
    """Draw weights (dashed) and weights + KV (solid) in GiB against context length.

    A dot marks where the KV cache overtakes the weights, when that happens within
    ``max_context``; otherwise the legend says where it would. Returns the Figure.
    """
    ax = new_ax(ax, (8, 5))
    context = np.linspace(0, max_context, 257).astype(np.int64)
    gib = float(1 << 30)
    for i, shape in enumerate(shapes):
        mem = memory_vs_context(shape, context, num_seqs)
        cross = crossover_context(shape, num_seqs)
        color = f"C{i}"
        where = f"KV = weights at {cross:,} tokens" + ("" if cross <= max_context
                                                        else " (beyond this plot)")
        ax.plot(context, mem["total"] / gib, color=color, label=f"{shape.name}: {where}")
        ax.plot(context, mem["weights"] / gib, color=color, linestyle="--", linewidth=1)
        if cross <= max_context:
            ax.plot([cross], [2 * weight_bytes(shape) / gib], "o", color=color)
    seqs = "1 sequence" if num_seqs == 1 else f"{num_seqs} sequences"
    ax.set(xlabel="context length (tokens)", ylabel="GiB (log scale)", yscale="log",
           title=f"Weights (dashed), weights + KV cache (solid), {seqs}; dot: KV = weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    return ax.figure
