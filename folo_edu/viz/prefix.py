"""Figures for notebook 08 (prefix caching): pure functions that read a real engine's
state into plain data, and plots of that data.

    snapshot            block tables, reference counts, the cached blocks and the free
                        queue of an engine, as plain data
    hash_chain_rows     one request's full blocks: tokens, parent hash, own hash, block
    plot_shared_blocks  block tables side by side; shared blocks carry their ref count
    plot_free_queue     the free queue in eviction order, cached blocks marked
    plot_ttft_vs_prefix cold and cached TTFT against the prefix length
    plot_hit_rate       hit rate against the shared-prefix length, one line per series
    plot_cache_sizes    the lab's payoff: hit rate and evictions against the cache size
"""
from __future__ import annotations

from dataclasses import dataclass, field

from folo_edu.viz._plot import new_ax


@dataclass
class PrefixSnapshot:
    """Plain data copied from an engine: nothing here refers back to it."""

    tables: dict[str, list[int]]          # request id -> its block table
    ref_counts: list[int]                 # per physical block
    cached: dict[int, str]                # cached block -> first hex digits of its hash
    parent: dict[int, int | None]         # cached block -> the block before it
    free_queue: list[int]                 # free blocks, the next one to be reused first
    num_blocks: int
    block_size: int
    stats: dict = field(default_factory=dict)


def short(h: bytes, n: int = 6) -> str:
    """The first ``n`` hex digits of a hash, enough to tell blocks apart in a figure."""
    return h.hex()[:n]


def snapshot(engine) -> PrefixSnapshot:
    kv = engine.kv_manager
    pool = kv.pool
    return PrefixSnapshot(
        tables={rid: list(t) for rid, t in kv.block_tables.items()},
        ref_counts=list(pool.ref_counts),
        cached={b: short(h) for b, h in pool.hash_of.items()},
        parent={b: pool.content[b][0] for b in pool.hash_of},
        free_queue=list(pool.free_queue), num_blocks=pool.num_blocks,
        block_size=kv.block_size, stats=engine.get_stats())


def hash_chain_rows(token_ids, block_size: int, pool=None) -> list[dict]:
    """The hash chain of ``token_ids``: one row per full block, with its tokens, its
    parent's hash, its own hash, and (given the engine's BlockPool) the physical block
    cached under that hash and its reference count."""
    from folo_edu.kv_cache.prefix_hash import block_hashes

    hashes = block_hashes(list(token_ids), block_size, [])
    rows = []
    for i, h in enumerate(hashes):
        block = pool.cached.get(h) if pool is not None else None
        rows.append({"block_index": i,
                     "tokens": list(token_ids[i * block_size:(i + 1) * block_size]),
                     "parent_hash": short(hashes[i - 1]) if i else "-",
                     "hash": short(h), "physical_block": block,
                     "ref_count": pool.ref_counts[block] if block is not None else None})
    return rows


def format_rows(rows: list[dict]) -> str:
    """Rows of dicts as a fixed-width text table (for printing in a notebook)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[j]) for c in cells)) for j, k in enumerate(keys)]
    line = "  ".join(k.rjust(w) for k, w in zip(keys, widths))
    return "\n".join([line, "-" * len(line)]
                     + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells])


def plot_shared_blocks(snap: PrefixSnapshot, title: str | None = None, ax=None):
    """Each request's block table as a row of boxes labelled with the physical block;
    a block held by several requests is drawn dark with its reference count. Below, the
    pool: held blocks (ref count), cached free blocks (their hash), empty free blocks."""
    import matplotlib.patches as mpatches

    width = max([len(t) for t in snap.tables.values()] + [1])
    cols = min(snap.num_blocks, 16)
    pool_rows = -(-snap.num_blocks // cols)
    ax = new_ax(ax, figsize=(max(6.5, 0.55 * max(width, cols) + 2),
                             0.45 * (len(snap.tables) + pool_rows) + 1.6))
    y = 0
    for rid, table in snap.tables.items():
        ax.text(-0.3, y + 0.4, rid, ha="right", va="center", fontsize=9)
        for j, b in enumerate(table):
            shared = snap.ref_counts[b] > 1
            ax.add_patch(mpatches.Rectangle((j, y), 0.92, 0.8,
                                            color="C3" if shared else "C0",
                                            alpha=0.85 if shared else 0.35))
            ax.text(j + 0.46, y + 0.4, f"{b}" + (f"\nx{snap.ref_counts[b]}" if shared else ""),
                    ha="center", va="center", fontsize=7,
                    color="white" if shared else "black")
        y += 1
    y += 0.6
    ax.text(-0.3, y + 0.4 * pool_rows, "pool", ha="right", va="center", fontsize=9)
    for b in range(snap.num_blocks):
        r, c = divmod(b, cols)
        ref = snap.ref_counts[b]
        if ref:
            color, alpha, label = ("C3", 0.85, f"{b}\nx{ref}") if ref > 1 else ("C0", 0.35,
                                                                                 f"{b}\nx1")
        elif b in snap.cached:
            color, alpha, label = "C2", 0.35, f"{b}\n{snap.cached[b][:3]}"
        else:
            color, alpha, label = "0.9", 1.0, f"{b}"
        ax.add_patch(mpatches.Rectangle((c, y + r), 0.92, 0.8, color=color, alpha=alpha))
        ax.text(c + 0.46, y + r + 0.4, label, ha="center", va="center", fontsize=6,
                color="white" if ref > 1 else "black")
    ax.set_xlim(-2.2, max(width, cols) + 0.2)
    ax.set_ylim(y + pool_rows + 0.2, -0.3)
    ax.axis("off")
    ax.legend(handles=[mpatches.Patch(color="C3", alpha=0.85, label="shared (ref count > 1)"),
                       mpatches.Patch(color="C0", alpha=0.35, label="held by one request"),
                       mpatches.Patch(color="C2", alpha=0.35, label="free, still cached"),
                       mpatches.Patch(color="0.9", label="free, empty")],
              loc="upper right", fontsize=7, ncol=2, bbox_to_anchor=(1.0, -0.02))
    ax.set_title(title or "block tables (physical block ids) and the block pool", fontsize=10)
    return ax.figure


def plot_free_queue(states: list[tuple[str, PrefixSnapshot]], ax=None):
    """One row per moment: the free queue in eviction order (left is reused first),
    cached blocks green with their hash, empty ones grey."""
    import matplotlib.patches as mpatches

    width = max(len(s.free_queue) for _, s in states)
    ax = new_ax(ax, figsize=(max(6.5, 0.5 * width + 2.5), 0.6 * len(states) + 1.2))
    for y, (label, s) in enumerate(states):
        ax.text(-0.3, y + 0.4, label, ha="right", va="center", fontsize=8)
        for j, b in enumerate(s.free_queue):
            cached = b in s.cached
            ax.add_patch(mpatches.Rectangle((j, y), 0.92, 0.8, color="C2" if cached else "0.85",
                                            alpha=0.5 if cached else 1.0))
            ax.text(j + 0.46, y + 0.4, str(b), ha="center", va="center", fontsize=7)
    ax.set_xlim(-5, width + 0.2)
    ax.set_ylim(len(states), -0.3)
    ax.axis("off")
    ax.set_title("free queue, next to be reused on the left (green: still cached)",
                 fontsize=10)
    return ax.figure


def plot_ttft_vs_prefix(rows: list[dict], ax=None, title: str | None = None):
    """rows: {"prefix_len", "cold_s", "warm_s"}; TTFT of the same request with an empty
    cache and with its prefix cached, and the speedup as text."""
    ax = new_ax(ax)
    x = [r["prefix_len"] for r in rows]
    ax.plot(x, [1e3 * r["cold_s"] for r in rows], "o-", color="C0", label="cold (no hit)")
    ax.plot(x, [1e3 * r["warm_s"] for r in rows], "s-", color="C2", label="prefix cached")
    for r in rows:
        if r["warm_s"]:
            ax.annotate(f"{r['cold_s'] / r['warm_s']:.1f}x", (r["prefix_len"], 1e3 * r["cold_s"]),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel("time to first token (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title or "TTFT with and without a prefix-cache hit", fontsize=10)
    return ax.figure


def plot_hit_rate(series: dict[str, list[tuple[int, float]]], ax=None,
                  title: str | None = None):
    """series: label -> [(shared prefix length, hit rate)]."""
    ax = new_ax(ax)
    for k, (label, points) in enumerate(series.items()):
        ax.plot([p for p, _ in points], [h for _, h in points], "os^vD"[k % 5] + "-",
                label=label, color=f"C{k}")
    ax.set_xlabel("shared prefix length (tokens)")
    ax.set_ylabel("prefix-cache hit rate (tokens)")
    ax.set_ylim(-0.02, 1.0)
    ax.legend(fontsize=8)
    ax.set_title(title or "hit rate against the shared-prefix length", fontsize=10)
    return ax.figure


def plot_cache_sizes(rows: list[dict], ax=None, title: str | None = None):
    """rows of labs.m6_prefix.measure_hits: hit rate and evictions against the cache size."""
    ax = new_ax(ax)
    x = [r["num_kv_blocks"] for r in rows]
    ax.plot(x, [r["hit_rate"] for r in rows], "o-", color="C2", label="hit rate")
    ax.set_xlabel("KV cache size (blocks)")
    ax.set_ylabel("hit rate (tokens)")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.bar(x, [r["evictions"] for r in rows], width=1.5, alpha=0.3, color="C3",
             label="evictions")
    twin.set_ylabel("cached blocks evicted")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "your lookup in the engine: a smaller cache forgets more",
                 fontsize=10)
    return ax.figure
