"""Kernel-launch overhead (M4): what one small op costs, and a model of a GPU decode step.

``time_per_op`` times one small op at growing sizes (the fixed cost per call shows up
as a floor); ``model_step_time`` models a decode step as kernel launches plus memory
traffic, eager or replayed from a CUDA graph.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from folo_edu.viz._plot import new_ax, seconds


def time_per_op(sizes=tuple(4 ** e for e in range(12)), repeats: int = 3,
                target_s: float = 0.005) -> dict:
    """Seconds per call of ``torch.add(a, b, out=c)`` on float32 vectors of each size.

    Each size runs enough back-to-back calls to last about ``target_s``; the best of
    ``repeats`` such loops counts. Returns numpy arrays "elements", "seconds" and
    "bytes" (a and b read, c written).
    """
    per_call = []
    for n in sizes:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        torch.add(a, b, out=c)  # warm-up
        one = seconds(lambda: torch.add(a, b, out=c))
        calls = int(min(1000, max(3, target_s / max(one, 1e-7))))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.add(a, b, out=c)
            best = min(best, (time.perf_counter() - t0) / calls)
        per_call.append(best)
    elements = np.array(sizes, dtype=np.int64)
    return {"elements": elements, "seconds": np.array(per_call), "bytes": 12 * elements}


def per_op_overhead(result: dict, max_elements: int = 1024) -> float:
    """The cost of one call when there is almost no work: the median seconds per call of
    the sizes up to ``max_elements`` in a ``time_per_op`` result."""
    small = result["seconds"][result["elements"] <= max_elements]
    if small.size == 0:
        raise ValueError(f"no size <= {max_elements} elements in the result")
    return float(np.median(small))


def plot_time_per_op(result: dict, ax=None, title: str | None = None):
    """Microseconds per call against elements, log-log, with the per-call floor and the
    memory-bandwidth line of the largest size. Returns the Figure."""
    ax = new_ax(ax, (6.5, 3.4))
    n, s = result["elements"], result["seconds"]
    floor = per_op_overhead(result)
    bandwidth = result["bytes"][-1] / s[-1]  # bytes per second at the largest size
    ax.loglog(n, 1e6 * s, "o-", color="C0", label="measured: torch.add, one call")
    ax.axhline(1e6 * floor, color="C3", ls="--", lw=1,
               label=f"per-call overhead, about {1e6 * floor:.1f} µs")
    ax.loglog(n, 1e6 * result["bytes"] / bandwidth, ":", color="0.4",
              label=f"bytes / {bandwidth / 1e9:.1f} GB/s (the largest size's rate)")
    ax.set(xlabel="elements per tensor (float32)", ylabel="µs per call",
           title=title or "one small op: the fixed cost per call dominates")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- a model of a GPU decode step --------------------------------------------------------
def model_step_time(batch_sizes, n_kernels: int, launch_s: float, weight_bytes: float,
                    kv_bytes_per_token: float, context_len: int, bandwidth: float) -> dict:
    """Decode step time on a GPU, modelled: launches plus memory traffic.

    work(B) = (weights + B x context_len x KV bytes per token) / bandwidth: every weight
    and every cached key/value read once at the full bandwidth (an optimistic floor).
    eager = n_kernels x launch_s + work: each kernel launched from the host.
    graphs = launch_s + work: one launch replays the captured graph.
    Returns numpy arrays "batch", "work", "eager", "graphs" (seconds).
    """
    b = np.asarray(batch_sizes, dtype=float)
    work = (weight_bytes + b * context_len * kv_bytes_per_token) / bandwidth
    return {"batch": b, "work": work, "eager": n_kernels * launch_s + work,
            "graphs": launch_s + work}


def plot_step_time_model(result: dict, ax=None, title: str | None = None):
    """The modelled eager and CUDA-graph step times against batch size. Returns the Figure."""
    ax = new_ax(ax, (6.5, 3.6))
    b = result["batch"]
    ax.plot(b, 1e3 * result["eager"], "o-", color="C3", label="eager: launches + work")
    ax.plot(b, 1e3 * result["graphs"], "s-", color="C0", label="CUDA graph: 1 launch + work")
    ax.plot(b, 1e3 * result["work"], ":", color="0.4", label="work alone (memory traffic)")
    for i in (0, len(b) - 1):
        ratio = result["eager"][i] / result["graphs"][i]
        ax.annotate(f"{ratio:.1f}x", (b[i], 1e3 * result["eager"][i]), fontsize=8,
                    xytext=(0, 6), textcoords="offset points", ha="center")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="decode batch size", ylabel="ms per decode step",
           title=title or "a GPU decode step, modelled")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure
