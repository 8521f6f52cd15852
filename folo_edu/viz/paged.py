"""The paged KV cache (M3): block tables of a real engine, drawn, and the memory plots.

Three kinds of functions, kept apart:

* drivers that read a real ``LLMEngine`` and return plain data: ``snapshot`` (block
  tables, cached tokens, queues and ``get_stats()`` right now) and
  ``record_snapshots`` (one snapshot after every step of a run);
* pure arithmetic: ``blocks_needed``, ``physical_view`` (which request owns each
  physical block, and how full it is);
* ``plot_*`` functions that only draw, and ``block_table_explorer``, a thin widget
  over ``plot_block_tables``.

The slot-mapping formula is ``folo_edu.kv_cache.slots.slot_of``, the engine's own.
The memory-waste and concurrency numbers come from ``folo_edu.bench.kv_memory``;
``plot_waste``, ``plot_concurrency`` and ``plot_kv_usage`` draw its results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from folo_edu.viz._plot import new_ax

FREE_COLOR = "white"


@dataclass
class KVSnapshot:
    """The KV cache's bookkeeping at one moment, as plain data.

    ``tables[r]`` lists request r's physical block ids in logical order;
    ``cached_tokens[r]`` is how many of its tokens have K/V in those blocks
    (``num_computed_tokens``). ``running`` is in admission order, ``waiting`` in
    queue order. ``step`` counts the engine steps run before the snapshot was taken.
    """

    step: int
    block_size: int
    num_blocks: int
    tables: dict[str, list[int]]
    cached_tokens: dict[str, int]
    running: list[str]
    waiting: list[str]
    free_blocks: list[int]
    stats: dict = field(default_factory=dict)
    last_step: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_blocks)


def snapshot(engine, step: int = 0) -> KVSnapshot:
    """Copy the engine's block tables, cached-token counts and queues right now."""
    kv, sched = engine.kv_manager, engine.scheduler
    tables = {rid: list(t) for rid, t in kv.block_tables.items()}
    cached = {rid: sched.requests[rid].num_computed_tokens for rid in tables
              if rid in sched.requests}
    return KVSnapshot(step, kv.block_size, kv.num_blocks, tables, cached,
                      [r.request_id for r in sched.running],
                      [r.request_id for r in sched.waiting], list(kv.pool.free_queue),
                      engine.get_stats(), list(getattr(engine, "last_step", [])))


def record_snapshots(engine, arrivals, max_steps: int = 10_000):
    """Drive ``engine`` step by step, keeping a snapshot before the first step and
    after every step.

    arrivals: ``(step, request_id, prompt, sampling_params)``; each request is added
    just before that step. Returns ``(snapshots, token_ids)`` where token_ids maps
    each finished request to its generated ids.
    """
    pending = sorted(arrivals, key=lambda a: a[0])
    snaps, tokens, step = [snapshot(engine, 0)], {}, 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= step:
            _, rid, prompt, params = pending.pop(0)
            engine.add_request(rid, prompt, params)
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = list(out.outputs[0].token_ids)
        step += 1
        snaps.append(snapshot(engine, step))
        if step > max_steps:
            raise RuntimeError(f"record_snapshots: unfinished after max_steps={max_steps}")
    return snaps, tokens


# ---- pure arithmetic -------------------------------------------------------------------
def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks that hold ``num_tokens`` tokens: ceil(num_tokens / block_size)."""
    return -(-num_tokens // block_size)


def physical_view(snap: KVSnapshot):
    """Per physical block: its owner (a request id, or None when free) and how many
    of its slots hold a token. Returns ``(owners, fill)``, a list and an int array."""
    owners: list[str | None] = [None] * snap.num_blocks
    fill = np.zeros(snap.num_blocks, dtype=int)
    for rid, table in snap.tables.items():
        n = snap.cached_tokens.get(rid, 0)
        for j, b in enumerate(table):
            assert owners[b] is None, f"block {b} is in two block tables"
            owners[b] = rid
            fill[b] = max(0, min(snap.block_size, n - j * snap.block_size))
    return owners, fill


def block_events(before: KVSnapshot, after: KVSnapshot) -> dict:
    """What happened to the blocks between two snapshots: ``{"allocated": {rid:
    [blocks]}, "freed": {rid: [blocks]}}``, request by request.

    A block taken and given back within one step (a request's last step can need one
    more block) is in neither snapshot, so it shows up in neither list.
    """
    allocated, freed = {}, {}
    for rid in sorted(set(before.tables) | set(after.tables), key=_natural_key):
        old, new = before.tables.get(rid, []), after.tables.get(rid, [])
        if new[:len(old)] == old:
            if len(new) > len(old):
                allocated[rid] = new[len(old):]
        else:  # the request's table was dropped (finished or preempted), maybe re-made
            freed[rid] = [b for b in old if b not in new]
            if [b for b in new if b not in old]:
                allocated[rid] = [b for b in new if b not in old]
    return {"allocated": allocated, "freed": freed}


def request_colors(request_ids) -> dict[str, tuple]:
    """A fixed colour per request (tab20 in the order given)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {rid: cmap(i % 20) for i, rid in enumerate(request_ids)}


# ---- figures ---------------------------------------------------------------------------
def _block(ax, x, y, fill_frac, color, label, edge="0.3", text_color="black"):
    from matplotlib.patches import Rectangle

    if fill_frac > 0:
        ax.add_patch(Rectangle((x, y), 0.9 * fill_frac, 0.8, facecolor=color,
                               edgecolor="none", alpha=0.85))
    ax.add_patch(Rectangle((x, y), 0.9, 0.8, facecolor="none", edgecolor=edge,
                           lw=0.8 if edge == "0.3" else 1.6))
    if label is not None:
        ax.text(x + 0.45, y + 0.4, label, ha="center", va="center", fontsize=7,
                color=text_color)


def plot_block_tables(snap: KVSnapshot, fig=None, colors: dict | None = None,
                      pool_columns: int = 8, title: str | None = None):
    """Left: each request's block table, logical block j -> physical block id, each
    block filled as far as it holds tokens. Right: the physical pool, each block
    outlined and filled in its owner's colour (grey outline: free). Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rids = list(snap.tables)
    colors = colors or request_colors(sorted(rids, key=_natural_key))
    widest = max([len(t) for t in snap.tables.values()] + [4])
    cols = min(pool_columns, snap.num_blocks)
    pool_rows = -(-snap.num_blocks // cols)
    rows = max(len(rids), pool_rows, 1)
    left_width = widest + 2.2  # room for the request labels
    if fig is None:
        fig = Figure(figsize=(0.5 * (left_width + cols) + 2.2, 0.5 * rows + 1.2),
                     layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[left_width, cols])
    bs = snap.block_size
    for i, rid in enumerate(rids):
        n = snap.cached_tokens.get(rid, 0)
        for j, b in enumerate(snap.tables[rid]):
            frac = max(0, min(bs, n - j * bs)) / bs
            _block(ax1, j, i, frac, colors.get(rid, "C0"), f"{b}")
        ax1.text(-0.15, i + 0.4, f"{rid} ({n} tok)", ha="right", va="center", fontsize=8)
    ax1.set_xlim(widest - left_width, widest)
    ax1.set_ylim(rows, -0.2)
    ax1.set_xticks([j + 0.45 for j in range(widest)], [str(j) for j in range(widest)])
    ax1.tick_params(axis="x", labelsize=7)
    ax1.set_yticks([])
    ax1.set_xlabel("logical block (in the box: its physical block)", fontsize=8)
    ax1.set_title("block tables", fontsize=9)
    for sp in ("top", "right", "left"):
        ax1.spines[sp].set_visible(False)
    owners, fill = physical_view(snap)
    for b in range(snap.num_blocks):
        owner = owners[b]
        color = colors.get(owner, "C0") if owner else FREE_COLOR
        _block(ax2, b % cols, b // cols, fill[b] / bs if owner else 0, color, str(b),
               edge=color if owner else "0.3", text_color="black" if owner else "0.6")
    ax2.set_xlim(-0.1, cols)
    ax2.set_ylim(rows, -0.2)
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax2.set_title(f"physical pool: {snap.num_used_blocks} of {snap.num_blocks} blocks "
                  f"of {bs} tokens used", fontsize=9)
    for sp in ax2.spines.values():
        sp.set_visible(False)
    handles = [Patch(color=colors[r], label=r) for r in sorted(rids, key=_natural_key)]
    handles.append(Patch(facecolor=FREE_COLOR, edgecolor="0.3", label="free"))
    ax2.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    waiting = ", ".join(snap.waiting) or "nobody"
    fig.suptitle(title or f"after step {snap.step}: running {', '.join(snap.running) or '-'}"
                          f"; waiting {waiting}", fontsize=9)
    return fig


def _natural_key(rid: str):
    digits = "".join(c for c in rid if c.isdigit())
    return (rid.rstrip("0123456789"), int(digits) if digits else -1, rid)


def block_table_explorer(snapshots, colors: dict | None = None):
    """A slider over recorded snapshots that redraws ``plot_block_tables``.

    A thin wrapper: headless runs never move the slider, so draw the static figures too.
    """
    import ipywidgets as widgets
    from IPython.display import display

    everyone = sorted({r for s in snapshots for r in s.tables} |
                      {r for s in snapshots for r in s.waiting}, key=_natural_key)
    colors = colors or request_colors(everyone)
    slider = widgets.IntSlider(value=min(1, len(snapshots) - 1), min=0,
                               max=len(snapshots) - 1, description="after step")
    out = widgets.Output()

    def redraw(change=None):
        out.clear_output(wait=True)
        with out:
            display(plot_block_tables(snapshots[slider.value], colors=colors))

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])


def plot_snapshot_stats(snapshots, ax=None, title: str | None = None):
    """KV blocks used, running and waiting requests, and the preemption count, after
    every step of a recorded run (from ``get_stats()``). Returns the Figure."""
    from matplotlib.ticker import MaxNLocator

    ax = new_ax(ax, (8, 3.2))
    steps = [s.step for s in snapshots]
    used = [s.stats["kv_blocks_used"] for s in snapshots]
    ax.step(steps, used, where="post", color="C0", label="KV blocks used")
    ax.axhline(snapshots[0].num_blocks, color="C0", ls=":", lw=1, label="KV blocks total")
    ax.set(xlabel="engine step", ylabel="KV blocks", ylim=(0, snapshots[0].num_blocks * 1.08))
    ax2 = ax.twinx()
    ax2.step(steps, [s.stats["num_running"] for s in snapshots], where="post", color="C2",
             label="running")
    ax2.step(steps, [s.stats["num_waiting"] for s in snapshots], where="post", color="0.5",
             ls="--", label="waiting")
    ax2.step(steps, [s.stats["num_preemptions"] for s in snapshots], where="post",
             color="C3", label="preemptions (total)")
    top = max(max(s.stats[k] for s in snapshots)
              for k in ("num_running", "num_waiting", "num_preemptions"))
    ax2.set_ylim(0, top * 1.08 + 0.5)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel("requests / preemptions")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.12, 1.0))
    ax.set_title(title or "get_stats() after every step", fontsize=10)
    ax.grid(True, alpha=0.3)
    return ax.figure


def plot_kv_usage(runs, ax=None, title: str | None = None):
    """Token slots allocated (solid) and holding a token (dashed) at every step, for
    one or more ``folo_edu.bench.kv_memory.KVRun``. Returns the Figure."""
    ax = new_ax(ax, (8, 3.2))
    for i, run in enumerate(runs):
        steps = np.arange(run.num_steps)
        ax.plot(steps, run.allocated, color=f"C{i}", lw=1.2,
                label=f"{run.label}: allocated")
        ax.plot(steps, run.used, color=f"C{i}", lw=1, ls="--",
                label=f"{run.label}: holding a token")
    ax.axhline(runs[0].budget_slots, color="0.4", ls=":", lw=1, label="KV budget")
    ax.set(xlabel="scheduler step", ylabel="token slots",
           title=title or "KV slots over a run (same requests, same budget)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, alpha=0.3)
    return ax.figure


def plot_waste(rows, ax=None, title: str | None = None):
    """Bars of the measured waste fraction per layout (rows from
    ``kv_memory.measure``), with the PagedAttention paper's ranges drawn for scale."""
    ax = new_ax(ax, (6, 3.2))
    labels = [r["label"] for r in rows]
    vals = [100 * r["waste_fraction"] for r in rows]
    bars = ax.bar(labels, vals, color=["0.55"] + [f"C{i}" for i in range(len(rows) - 1)])
    for bar, v in zip(bars, vals):
        ax.annotate(f"{v:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhspan(60, 80, color="0.85", zorder=0, label="paper: earlier systems, 60-80%")
    ax.axhline(4, color="C3", ls=":", lw=1, label="paper: vLLM, under 4%")
    ax.set(ylabel="KV slots allocated but empty (%)", ylim=(0, 100),
           title=title or "memory waste (measured, time-averaged)")
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(axis="x", labelsize=8)
    return ax.figure


def plot_concurrency(rows, ax=None, title: str | None = None):
    """Requests running at once on one KV budget, per layout: the peak, the mean over
    the steps in which others were queued (measured), and the analytic steady state
    (``analytic_concurrency``'s time_average). Returns the Figure."""
    ax = new_ax(ax, (6.5, 3.4))
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    peak = [r["peak_running"] for r in rows]
    mean = [r["mean_running_while_queued"] or 0 for r in rows]
    analytic = [r["analytic_concurrency"]["time_average"] if "analytic_concurrency" in r
                else r["analytic_time_average"] for r in rows]
    w = 0.27
    ax.bar(x - w, peak, w, color="0.7", label="peak (measured)")
    b = ax.bar(x, mean, w, color="C0", label="mean while others wait (measured)")
    ax.bar(x + w, analytic, w, color="C1", alpha=0.8, label="analytic steady state")
    for bar, v in zip(b, mean):
        ax.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylabel="requests running at once", title=title or "concurrency on one KV budget")
    ax.legend(fontsize=7, loc="upper left")
    return ax.figure
