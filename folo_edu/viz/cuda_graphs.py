"""CUDA graphs (M4): DecodeGraphRunner's batch-size buckets, and engine decode steps timed.

``bucket_of`` is the engine's own (``folo_edu.engine.cuda_graphs``); ``padding_rows``
counts what a batch is padded with; ``time_engine_decode`` times engine steps in which
every request decodes (the notebook's GPU cells).
"""
from __future__ import annotations

import random
import statistics

import numpy as np

from folo_edu.engine.cuda_graphs import bucket_of, graph_batch_sizes
from folo_edu.viz._plot import new_ax, seconds

__all__ = ["bucket_of", "padding_rows", "plot_bucket_padding", "time_engine_decode",
           "plot_engine_decode"]


def padding_rows(n: int, sizes) -> int:
    """The rows a batch of ``n`` is padded with to fill its bucket."""
    return bucket_of(n, sizes) - n


def plot_bucket_padding(max_batch: int = 64, ax=None, title: str | None = None):
    """Padding rows for every batch size 1..max_batch in ``graph_batch_sizes(max_batch)``
    buckets, and the share of each bucket they fill. Returns the Figure."""
    ax = new_ax(ax, (8, 3.2))
    sizes = graph_batch_sizes(max_batch)
    n = np.arange(1, max_batch + 1)
    pad = np.array([padding_rows(int(i), sizes) for i in n])
    bucket = n + pad
    colors = [f"C{sizes.index(int(b)) % 10}" for b in bucket]
    ax.bar(n, pad, color=colors, width=0.85)
    ax.set(xlabel="decode batch size (running requests)", ylabel="padding rows",
           xlim=(0.3, max_batch + 0.7),
           title=title or f"CUDA-graph buckets {sizes}: padding per batch size")
    for s in sizes:
        ax.axvline(s + 0.5, color="0.7", lw=0.6, zorder=0)
    ax2 = ax.twinx()
    ax2.plot(n, 100 * pad / bucket, color="0.2", lw=1, label="padding share of the bucket")
    ax2.set(ylabel="padding share (%)", ylim=(0, 100))
    ax2.legend(fontsize=7, loc="upper right")
    return ax.figure


def time_engine_decode(engine, batch: int, steps: int = 10, prompt_len: int = 8,
                       seed: int = 0) -> dict:
    """Median milliseconds of an engine step in which ``batch`` requests all decode.

    Adds ``batch`` requests of random ``prompt_len``-token prompts, runs their prefill
    steps, skips one decode step (warm-up), times the next ``steps``, then runs the
    requests to their end. The engine must have no other requests.
    """
    from folo_edu import SamplingParams

    max_seqs = engine.config.scheduler_config.max_num_seqs
    if not 1 <= batch <= max_seqs or prompt_len < 2 or engine.has_unfinished_requests():
        raise ValueError(f"batch={batch}, prompt_len={prompt_len}: expected 1 <= batch <= "
                         f"max_num_seqs={max_seqs}, prompt_len >= 2 and an idle engine")
    rng = random.Random(seed)
    vocab = engine.model_runner.model.spec.vocab_size
    params = SamplingParams(temperature=0, max_tokens=steps + 4, ignore_eos=True)
    for i in range(batch):
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        engine.add_request(f"decode-timing-{seed}-{i}", {"prompt_token_ids": prompt}, params)
    device, times, warm = engine.model_runner.device, [], False
    while len(times) < steps and engine.has_unfinished_requests():
        took = seconds(engine.step, device)
        if engine.get_stats()["num_batched_tokens_last_step"] == batch:  # decodes only
            if warm:
                times.append(took)
            warm = True
    while engine.has_unfinished_requests():  # the few tokens left: leave the engine idle
        engine.step()
    if len(times) < steps:
        raise RuntimeError(f"only {len(times)} of {steps} steps had all {batch} requests "
                           "decoding (too few KV blocks?)")
    return {"batch": batch, "ms_per_step": 1e3 * statistics.median(times), "steps": steps,
            "cuda_graph_status": engine.model_runner.cuda_graph_status}


def plot_engine_decode(rows, ax=None, title: str | None = None):
    """ms per decode step against batch size, one line per row["config"]. Returns the Figure."""
    ax = new_ax(ax, (6.5, 3.4))
    for i, config in enumerate(dict.fromkeys(r["config"] for r in rows)):
        mine = sorted((r["batch"], r["ms_per_step"]) for r in rows if r["config"] == config)
        ax.plot(*zip(*mine), "o-", color=f"C{i}", label=config)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="decode batch size", ylabel="ms per engine step",
           title=title or "decode step time, measured")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure
