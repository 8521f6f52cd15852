"""Chunked prefill (M5): who waits for a long prompt, and what the token budget trades.

Pure functions over plain data, then ``plot_*`` functions that only draw:

* timelines (``viz.batching.Timeline``, recorded from a real engine with
  ``viz.batching.record_timeline``): ``chunk_sizes``, ``step_token_split``,
  ``plot_chunk_timelines`` (two Gantt charts with each prefill cell labelled by its
  tokens, over bars of the tokens in each step against the budget);
* runs of ``folo_edu.bench.latency.run_arrival``: ``itl_points``, ``budget_rows``,
  ``plot_itl_around_arrival`` (the ITL of running requests against the time since the
  long prompt arrived: a spike without chunking, a flat line with it),
  ``plot_budget_tradeoff`` (ITL and TTFT against max_num_batched_tokens);
* ``result_rows`` reads the same rows out of ``benchmarks/results/m5_latency_cpu.json``.
"""
from __future__ import annotations

import numpy as np

from folo_edu.viz._plot import new_ax
from folo_edu.viz.batching import KIND_COLORS, Timeline, plot_timeline


# ---- timelines -------------------------------------------------------------------------
def chunk_sizes(timeline: Timeline, request_id: str) -> list[int]:
    """The prefill chunks of one request, in step order (one entry without chunking)."""
    return [n for step in timeline.steps for r, n, k in step if r == request_id and k == "prefill"]


def step_token_split(timeline: Timeline) -> tuple[list[int], list[int]]:
    """(decode tokens, prefill tokens) of every step."""
    decode = [sum(n for _, n, k in step if k == "decode") for step in timeline.steps]
    prefill = [sum(n for _, n, k in step if k == "prefill") for step in timeline.steps]
    return decode, prefill


def _label_prefills(ax, timeline: Timeline) -> None:
    rows = {r: i for i, r in enumerate(timeline.request_ids)}
    for s, step in enumerate(timeline.steps):
        for rid, n, kind in step:
            if kind == "prefill" and rid in rows:
                ax.text(s + 0.5, rows[rid], str(n), ha="center", va="center", fontsize=6,
                        color="black", rotation=90 if n >= 100 else 0)


def plot_chunk_timelines(timelines: dict[str, Timeline], budgets: dict[str, int], fig=None):
    """For each labelled timeline: a Gantt chart (orange prefill cells labelled with their
    tokens, blue decodes), and under it the tokens of each step, decode and prefill
    stacked, with the budget as a dotted line. All on one step axis. Returns the Figure."""
    from matplotlib.figure import Figure

    n = len(timelines)
    rows = max(len(t.arrival_step) for t in timelines.values())
    if fig is None:
        fig = Figure(figsize=(10, n * (0.28 * rows + 2.6)), layout="constrained")
    axes = fig.subplots(2 * n, 1, sharex=True,
                        gridspec_kw={"height_ratios": [0.28 * rows + 0.8, 1.4] * n})
    width = max(t.num_steps for t in timelines.values())
    for k, (label, tl) in enumerate(timelines.items()):
        gantt, bars = axes[2 * k], axes[2 * k + 1]
        plot_timeline(tl, gantt, title=f"{label}: {tl.num_steps} steps")
        _label_prefills(gantt, tl)
        gantt.set_xlabel(None)
        decode, prefill = step_token_split(tl)
        x = np.arange(tl.num_steps) + 0.5
        bars.bar(x, decode, width=0.9, color=KIND_COLORS["decode"], label="decode tokens")
        bars.bar(x, prefill, width=0.9, bottom=decode, color=KIND_COLORS["prefill"],
                 label="prefill tokens")
        if label in budgets:
            bars.axhline(budgets[label], color="0.3", linestyle=":",
                         label=f"budget {budgets[label]}")
        bars.set(ylabel="tokens", xlim=(0, width))
        bars.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        bars.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xlabel("engine step")
    return fig


# ---- measured runs (bench.latency.run_arrival) -----------------------------------------
def itl_points(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """(seconds after the long prompt arrived, ITL in ms) of every running request's
    tokens, sorted by time."""
    at = np.array([t for row in run["itl_at"] for t in row])
    itl = np.array([x for row in run["itls"] for x in row]) * 1e3
    order = np.argsort(at, kind="stable")
    return at[order], itl[order]


def _percentile(values, p: float) -> float | None:
    return float(np.percentile(values, p)) if len(values) else None


def budget_rows(runs: dict, unchunked=None) -> list[dict]:
    """One row per budget of ``{budget: run_arrival result}``, in budget order:
    budget, itl_p50_ms, itl_p99_ms, itl_max_ms, ttft_s, chunks (the long prompt's
    prefill steps). ``unchunked``, a run without chunking, gives a row with budget None."""
    def row(budget, run):
        flat = [x * 1e3 for r in run["itls"] for x in r]
        return {"budget": budget, "itl_p50_ms": _percentile(flat, 50),
                "itl_p99_ms": _percentile(flat, 99), "itl_max_ms": max(flat) if flat else None,
                "ttft_s": run.get("long_ttft_s"), "chunks": len(run.get("long_chunks", []))}

    rows = [row(b, runs[b]) for b in sorted(runs)]
    if unchunked is not None:
        rows.append(row(None, unchunked))
    return rows


def result_rows(result: dict, threads: int = 1) -> list[dict]:
    """The same rows (ms and s) from a ``folo-edu bench --workload latency`` JSON."""
    rows = []
    for m in result["medians"]:
        if m["threads"] != threads:
            continue
        rows.append({"budget": m["max_num_batched_tokens"] if m["enable_chunked_prefill"]
                     else None, "itl_p50_ms": m["itl_p50_s"] * 1e3,
                     "itl_p99_ms": m["itl_p99_s"] * 1e3, "itl_max_ms": m["itl_max_s"] * 1e3,
                     "ttft_s": m["long_ttft_s"], "chunks": m["long_prefill_steps"]})
    return sorted(rows, key=lambda r: (r["budget"] is None, r["budget"] or 0))


def plot_itl_around_arrival(runs: dict, ax=None, title: str | None = None):
    """ITL (ms, log scale) of the running requests' tokens against the seconds since the
    long prompt arrived, one series per labelled ``run_arrival`` result; a dashed line at
    the arrival. Returns the Figure."""
    ax = new_ax(ax, (8, 3.4))
    markers = "os^vD"
    for k, (label, run) in enumerate(runs.items()):
        t, itl = itl_points(run)
        ax.plot(t, itl, markers[k % len(markers)] + "-", markersize=3, linewidth=0.8,
                alpha=0.8, label=f"{label} (max {itl.max():.0f} ms)")
    ax.axvline(0, color="0.4", linestyle="--", linewidth=1)
    ax.annotate("long prompt arrives", (0, 1), xycoords=("data", "axes fraction"),
                xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.set(xlabel="seconds since the long prompt was added",
           ylabel="inter-token latency (ms)", yscale="log",
           title=title or "running requests' inter-token latency (measured)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


def plot_budget_tradeoff(rows: list[dict], fig=None, title: str = ""):
    """Left: the running requests' ITL p50 and p99 against the chunked budget (log2
    axis); right: the long prompt's TTFT. The unchunked row (budget None) is a horizontal
    line on both. Returns the Figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = fig or Figure(figsize=(10, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    chunked = [r for r in rows if r["budget"] is not None]
    flat = [r for r in rows if r["budget"] is None]
    b = [r["budget"] for r in chunked]
    for key, style, label in (("itl_p99_ms", "o-", "p99"), ("itl_p50_ms", "s-", "p50")):
        line, = ax1.plot(b, [r[key] for r in chunked], style, label=f"ITL {label}")
        if flat:
            ax1.axhline(flat[0][key], color=line.get_color(), linestyle="--", linewidth=1,
                        alpha=0.7)
    ax1.set(xscale="log", yscale="log", xlabel="max_num_batched_tokens (chunked)",
            ylabel="ms", title=title or "running requests: ITL")
    ax1.yaxis.set_major_formatter(ScalarFormatter())
    ax2.plot(b, [r["ttft_s"] for r in chunked], "o-", color="C3", label="chunked")
    if flat:
        ax2.axhline(flat[0]["ttft_s"], color="C3", linestyle="--", linewidth=1,
                    label="unchunked")
        ax1.plot([], [], "k--", linewidth=1, label="dashed: unchunked")
    ax2.set(xscale="log", xlabel="max_num_batched_tokens (chunked)", ylabel="seconds",
            title="the long prompt: time to first token", ylim=(0, None))
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [str(v) for v in b])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig
