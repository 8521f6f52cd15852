"""PagedAttention on one decode step (M4): the backends compared on a synthetic paged
cache, and one online-softmax step.

``synthetic_decode_step`` builds one decode step (random queries, a paged cache with
shuffled blocks, the real ``AttentionMetadata``); ``max_abs_diff_vs_naive`` and
``measure_decode_latency`` call the backends' ``forward`` on it;
``online_softmax_merge`` folds one tile of scores into PagedAttention's running softmax.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from folo_edu.attention import AttentionMetadata, get_backend
from folo_edu.kv_cache.slots import slot_of
from folo_edu.viz._plot import BACKEND_STYLE, new_ax, seconds


@dataclass
class DecodeStep:
    """What one attention layer gets in a decode step of B sequences (one query each)."""

    q: torch.Tensor        # [B, H, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]; this step's K/V already in it
    v_cache: torch.Tensor
    meta: AttentionMetadata
    k: torch.Tensor        # [B, KVH, D] this step's keys and values
    v: torch.Tensor
    scale: float

    def forward_args(self) -> tuple:
        """The arguments of ``AttentionBackend.forward``."""
        return self.q, self.k_cache, self.v_cache, self.meta, self.scale, self.k, self.v


def synthetic_decode_step(batch: int, context_len, num_heads: int = 4, num_kv_heads: int = 2,
                          head_dim: int = 32, block_size: int = 16, seed: int = 0,
                          dtype=torch.float32, device="cpu") -> DecodeStep:
    """Random q and a random paged cache whose blocks are shuffled over the pool, as after a
    while in a real engine. context_len: one length for every sequence, or a list of B.
    Each sequence's newest token (position len - 1) is the one decoded."""
    lens = [context_len] * batch if isinstance(context_len, int) else list(context_len)
    if len(lens) != batch or min(lens, default=1) < 1:
        raise ValueError(f"context_len={context_len!r}: expected an int >= 1 or {batch} of them")
    lens.sort()  # the order in which ModelRunner hands decodes to a backend
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    nblocks = [-(-n // block_size) for n in lens]
    ids = list(range(sum(nblocks) + 1))  # one spare block
    rng.shuffle(ids)
    tables, start = [], 0
    for n in nblocks:
        tables.append(ids[start:start + n])
        start += n
    width = max(nblocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device)
    slots = torch.tensor([slot_of(t, block_size, n - 1) for t, n in zip(tables, lens)],
                         device=device)
    shape = (len(ids), block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(device, dtype)
    v_cache = torch.randn(shape, generator=gen).to(device, dtype)
    q = torch.randn(batch, num_heads, head_dim, generator=gen).to(device, dtype)
    k = k_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    v = v_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    meta = AttentionMetadata.build([1] * batch, lens, slots, block_tables, block_size)
    return DecodeStep(q, k_cache, v_cache, meta, k, v, head_dim ** -0.5)


@torch.inference_mode()
def max_abs_diff_vs_naive(step: DecodeStep, names) -> dict[str, float]:
    """The largest |output - naive output| of each backend in ``names`` on ``step``."""
    device = step.q.device
    reference = get_backend("naive", device).forward(*step.forward_args())
    return {name: (get_backend(name, device).forward(*step.forward_args()) - reference)
            .abs().max().item() for name in names}


@torch.inference_mode()
def measure_decode_latency(names, points, repeats: int = 5, max_call_s: float = 0.2,
                           **shape) -> list[dict]:
    """Time one attention layer's ``forward`` per backend at each (batch, context_len) point.

    Per-step metadata (sdpa's decode groups, flex's block mask) is built in a warm-up call
    outside the timing, as the engine shares it across layers; first calls also pay
    one-off costs (flex traces itself again for new shapes). Then the best of ``repeats``
    calls counts: on a shared machine other jobs only ever add time. Give the points
    smallest first: once one timed call of a backend takes longer than ``max_call_s``, it
    is skipped at that point and every later one. Returns one row per backend and point,
    ``{"backend", "batch", "context", "ms"}``, with ms None and a "note" when skipped.
    """
    rows, slow = [], {}
    for batch, context in points:
        step = synthetic_decode_step(batch, context, **shape)
        device = step.q.device
        for name in names:
            row = {"backend": name, "batch": batch, "context": context, "ms": None}
            if name in slow:
                rows.append(dict(row, note=f"skipped: {slow[name]}"))
                continue
            backend = get_backend(name, device)

            def call():
                backend.forward(*step.forward_args())

            call()  # warm-up
            first = seconds(call, device)
            if first > max_call_s:
                slow[name] = (f"one call took {first:.2f} s at batch {batch}, context "
                              f"{context} (limit {max_call_s} s)")
                rows.append(dict(row, note=f"skipped: {slow[name]}"))
                continue
            best = min([first] + [seconds(call, device) for _ in range(repeats - 1)])
            rows.append(dict(row, ms=1e3 * best))
    return rows


def plot_decode_latency(rows, x: str = "batch", ax=None, title: str | None = None):
    """Measured ms per attention call against ``x`` ("batch" or "context"), one line per
    backend (rows from ``measure_decode_latency``; skipped points are left out)."""
    if x not in ("batch", "context"):
        raise ValueError(f"x={x!r}: expected 'batch' or 'context'")
    ax = new_ax(ax, (6, 3.4))
    fixed = "context" if x == "batch" else "batch"
    for name in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r[x], r["ms"]) for r in rows if r["backend"] == name and r["ms"])
        if pts:
            color, marker = BACKEND_STYLE.get(name, ("C4", "x"))
            ax.plot(*zip(*pts), marker=marker, color=color, label=name)
    fixed_values = ", ".join(str(v) for v in sorted({r[fixed] for r in rows}))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="decode batch size" if x == "batch" else "context length (tokens)",
           ylabel="ms per attention call",
           title=title or f"one layer's decode attention ({fixed} {fixed_values})")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


def online_softmax_merge(m: float, l: float, scores) -> tuple[float, float]:
    """Fold one tile of scores into a running softmax: (running max m, running sum l of
    exp(score - m)) -> (new max, new sum). Start from m = -inf, l = 0."""
    scores = [float(s) for s in scores]
    m_new = max([m, *scores])
    return m_new, l * math.exp(m - m_new) + sum(math.exp(s - m_new) for s in scores)
