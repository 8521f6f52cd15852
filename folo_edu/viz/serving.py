"""Figures for notebook 10 (serving), from the rows of ``bench.serving`` results.

    rate_label            "0.5", "inf" -> a tick label
    plot_latency_vs_rate  TTFT and ITL p50/p99 against the request rate (two panels),
                          with the output throughput per rate on a twin axis
"""
from __future__ import annotations

import math


def rate_label(rate) -> str:
    return "all at once" if rate == "inf" or (isinstance(rate, float) and math.isinf(rate)) \
        else f"{rate:g}"


def plot_latency_vs_rate(rows: list[dict], title: str | None = None, fig=None):
    """rows: ``result["rates"]`` of a serving benchmark. Left: TTFT p50/p99; right: ITL
    p50/p99, both in seconds on a log scale against the request rate (evenly spaced
    ticks, one per rate); throughput (output tokens/s) as bars behind the ITL panel."""
    from matplotlib.figure import Figure

    fig = fig or Figure(figsize=(9.5, 3.4), layout="constrained")
    ax_ttft, ax_itl = fig.subplots(1, 2)
    x = list(range(len(rows)))
    labels = [rate_label(r["request_rate"]) for r in rows]
    for ax, key, name in ((ax_ttft, "ttft_s", "time to first token"),
                          (ax_itl, "itl_s", "inter-token latency")):
        ax.plot(x, [r[key]["p50"] for r in rows], "o-", color="C0", label="p50")
        ax.plot(x, [r[key]["p99"] for r in rows], "s--", color="C3", label="p99")
        ax.set_yscale("log")
        ax.set_xticks(x, labels)
        ax.set_xlabel("request rate (requests/s, Poisson arrivals)")
        ax.set_ylabel(f"{name} (s)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    twin = ax_itl.twinx()
    twin.bar(x, [r["output_throughput"] for r in rows], width=0.5, alpha=0.15, color="C2")
    twin.set_ylabel("output tokens/s (bars)", color="C2")
    twin.set_ylim(bottom=0)
    ax_itl.set_zorder(twin.get_zorder() + 1)
    ax_itl.patch.set_visible(False)
    fig.suptitle(title or "latency against load", fontsize=10)
    return fig
