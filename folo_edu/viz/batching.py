"""Continuous batching (M2): timelines of real runs, and static against continuous batching.

Three kinds of functions, kept apart:

* drivers that run a real ``LLMEngine`` and return plain data:
  ``record_timeline`` (step by step, keeping ``engine.last_step`` and
  ``engine.get_stats()`` after every step), ``run_continuous``, ``run_static``,
  ``measure_throughput``;
* schedules from request lengths alone: ``simulate_continuous`` (the real
  scheduler, driven by a fake model), ``simulate_static`` (batches that wait for
  their longest member), ``static_batching_steps``, ``continuous_batching_steps``,
  ``static_slot_usage``, ``static_layout``;
* ``plot_*`` functions that only draw, and ``batching_explorer``, a thin widget
  over ``plot_static_vs_continuous``.

A ``Timeline`` is the common currency: per step, the list of
``(request id, tokens, kind)`` with kind "prefill", "decode", or (static
batching only) "padding", a row that has finished but is still computed because
its batch has not.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from folo_edu.viz._plot import new_ax

KIND_COLORS = {"prefill": "C1", "decode": "C0", "padding": "0.75"}
WAITING_COLOR = "0.92"


@dataclass
class Timeline:
    """Which request ran in which step, and what the engine reported after each step.

    ``steps[s]`` lists ``(request_id, num_tokens, kind)`` for step ``s``;
    ``arrival_step[r]`` is the step before which request r was added (it may wait
    longer than that for a seat); ``finish_step[r]`` the step that produced its last
    token. ``stats`` and ``step_seconds`` are empty for simulated timelines.
    """

    steps: list[list[tuple[str, int, str]]]
    arrival_step: dict[str, int]
    finish_step: dict[str, int]
    stats: list[dict] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    token_ids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def request_ids(self) -> list[str]:
        """Request ids in arrival order (ties: in the order they were added)."""
        return sorted(self.arrival_step, key=lambda r: self.arrival_step[r])

    def tokens_per_step(self) -> list[int]:
        """Tokens computed in each step (padding rows count: they are computed)."""
        return [sum(n for _, n, _ in step) for step in self.steps]

    def schedule(self) -> list[set[tuple[str, int, str]]]:
        """Each step as a set, for comparing two timelines regardless of order."""
        return [set(step) for step in self.steps]

    def first_step(self, request_id: str) -> int:
        """The step in which the request was first scheduled."""
        return next(s for s, step in enumerate(self.steps)
                    if any(r == request_id for r, _, _ in step))


# ---- workloads ---------------------------------------------------------------------------
def random_requests(prompt_lens, output_lens, vocab_size: int, seed: int = 0,
                    low: int = 3) -> list[tuple[list[int], int]]:
    """``(prompt token ids, output length)`` pairs with random ids in [low, vocab_size)."""
    if len(prompt_lens) != len(output_lens):
        raise ValueError(f"prompt_lens has {len(prompt_lens)} entries and output_lens "
                         f"{len(output_lens)}; expected one of each per request")
    rng = random.Random(seed)
    return [([rng.randrange(low, vocab_size) for _ in range(p)], o)
            for p, o in zip(prompt_lens, output_lens)]


def _greedy(max_tokens: int):
    from folo_edu.sampling_params import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


# ---- drivers of a real engine ------------------------------------------------------------
def record_timeline(engine, arrivals, max_steps: int = 100_000) -> Timeline:
    """Drive ``engine`` step by step and record who ran in each step.

    arrivals: ``(step, request_id, prompt, sampling_params)`` tuples; each request is
    added just before that step runs (ties in the order given). The engine is stepped
    until every request has finished; a step with nothing to run still counts, so the
    x axis is the same as the arrival steps. (A request with n > 1 shows up in
    ``steps`` as its children ``id#i``, and in ``finish_step`` under its own id.)
    """
    pending = sorted(arrivals, key=lambda a: a[0])
    steps, stats, seconds = [], [], []
    arrival, finish, tokens = {}, {}, {}
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= step:
            _, rid, prompt, params = pending.pop(0)
            engine.add_request(rid, prompt, params)
            arrival[rid] = step
        t0 = time.perf_counter()
        outs = engine.step()
        seconds.append(time.perf_counter() - t0)
        steps.append(list(engine.last_step))
        stats.append(engine.get_stats())
        for out in outs:
            if out.finished:
                finish[out.request_id] = step
                tokens[out.request_id] = list(out.outputs[0].token_ids)
        step += 1
        if step > max_steps:
            raise RuntimeError(f"record_timeline: still unfinished after max_steps={max_steps}")
    return Timeline(steps, arrival, finish, stats, seconds, tokens)


def run_continuous(engine, requests) -> dict:
    """Add every ``(prompt ids, output length)`` request at once, step until all finish.

    Greedy, EOS ignored, so each request yields exactly its output length. Returns
    output_tokens, seconds, steps, tok_s, token_ids (in request order), and per step
    step_seconds, step_tokens and step_decode_only (True when the step had no prefill).
    """
    ids = [f"c{i}" for i in range(len(requests))]
    t0 = time.perf_counter()
    for rid, (prompt, n) in zip(ids, requests):
        engine.add_request(rid, {"prompt_token_ids": prompt}, _greedy(n))
    done, step_seconds, step_tokens, decode_only = {}, [], [], []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        outs = engine.step()
        step_seconds.append(time.perf_counter() - t)
        step_tokens.append(sum(n for _, n, _ in engine.last_step))
        decode_only.append(all(kind == "decode" for _, _, kind in engine.last_step))
        for out in outs:
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    seconds = time.perf_counter() - t0
    total = sum(len(t) for t in done.values())
    return {"output_tokens": total, "seconds": seconds, "steps": len(step_seconds),
            "tok_s": total / seconds, "token_ids": [done[r] for r in ids],
            "step_seconds": step_seconds, "step_tokens": step_tokens,
            "step_decode_only": decode_only}


def run_static(engine, requests, batch_size: int) -> dict:
    """Static batching on the same engine: add ``batch_size`` requests, step until all of
    them finish, only then add the next ``batch_size``.

    Give the engine ``max_num_seqs >= batch_size``. folo_edu drops a finished request
    from the flat batch, so unlike a padded static batch no compute is spent on it;
    what is lost is the empty seat until the batch's longest member is done. Same
    return value as ``run_continuous``.
    """
    _check_batch_size(batch_size)
    ids = [f"s{i}" for i in range(len(requests))]
    done, steps = {}, 0
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch_size):
        for rid, (prompt, n) in zip(ids[start:start + batch_size],
                                    requests[start:start + batch_size]):
            engine.add_request(rid, {"prompt_token_ids": prompt}, _greedy(n))
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = list(out.outputs[0].token_ids)
            steps += 1
    seconds = time.perf_counter() - t0
    total = sum(len(t) for t in done.values())
    return {"output_tokens": total, "seconds": seconds, "steps": steps,
            "tok_s": total / seconds, "token_ids": [done[r] for r in ids]}


def measure_throughput(make_engine, requests, max_num_seqs_values, repeats: int = 1) -> list[dict]:
    """Output tokens/s of ``run_continuous`` for each max_num_seqs.

    make_engine(max_num_seqs) must return a fresh LLMEngine. The engine is built
    outside the timed region. With repeats > 1 the fastest run is kept (the least
    disturbed by other work on the machine). Returns one dict per value: max_num_seqs,
    tok_s, seconds, steps, ms_per_step (all steps, mean), full_decode_ms (median of
    the decode-only steps that ran max_num_seqs requests; None if there was none),
    output_tokens.
    """
    results = []
    for b in max_num_seqs_values:
        best = None
        for _ in range(repeats):
            run = run_continuous(make_engine(b), requests)
            if best is None or run["seconds"] < best["seconds"]:
                best = run
        seats = min(b, len(requests))
        full = [sec for sec, n, dec in zip(best["step_seconds"], best["step_tokens"],
                                           best["step_decode_only"]) if dec and n == seats]
        results.append({"max_num_seqs": b, "tok_s": best["tok_s"], "seconds": best["seconds"],
                        "steps": best["steps"], "output_tokens": best["output_tokens"],
                        "ms_per_step": 1000 * best["seconds"] / best["steps"],
                        "full_decode_ms": 1000 * float(np.median(full)) if full else None})
    return results


# ---- pure arithmetic ---------------------------------------------------------------------
def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size/max_num_seqs={batch_size!r}: expected an int >= 1")


def _check_lengths(prompt_lens, output_lens) -> None:
    if len(prompt_lens) != len(output_lens):
        raise ValueError(f"prompt_lens has {len(prompt_lens)} entries and output_lens "
                         f"{len(output_lens)}; expected one of each per request")
    if any(p < 1 for p in prompt_lens) or any(o < 1 for o in output_lens):
        raise ValueError("every prompt and every output needs at least 1 token")


def simulate_continuous(prompt_lens, output_lens, max_num_seqs: int,
                        max_num_batched_tokens: int | None = None, arrival_steps=None,
                        ids=None) -> Timeline:
    """The schedule folo_edu's scheduler makes, from lengths alone: the real ``Scheduler``
    driven by a fake model (``folo_edu.bench.replay``), no weights, no tensors.

    The KV cache is big enough that nobody is preempted, and prefill is not chunked.
    The token budget (max_num_batched_tokens) is unlimited when None. Each request
    arrives before step ``arrival_steps[i]`` (default 0) and yields exactly its output
    length. Rows are labelled as ``LLMEngine.last_step`` labels them.
    """
    from folo_edu.bench.replay import fake_request, make_scheduler, replay

    _check_lengths(prompt_lens, output_lens)
    _check_batch_size(max_num_seqs)
    n = len(prompt_lens)
    ids = [f"r{i}" for i in range(n)] if ids is None else list(ids)
    arrival_steps = [0] * n if arrival_steps is None else list(arrival_steps)
    if max_num_batched_tokens is not None and max_num_batched_tokens < max_num_seqs:
        raise ValueError(f"max_num_batched_tokens={max_num_batched_tokens}: expected >= "
                         f"max_num_seqs={max_num_seqs} (every running request needs a token)")
    budget = max_num_batched_tokens or sum(prompt_lens) + n
    if max(prompt_lens) > budget:
        raise ValueError(f"a prompt of {max(prompt_lens)} tokens never fits in "
                         f"max_num_batched_tokens={max_num_batched_tokens}")
    totals = [p + o for p, o in zip(prompt_lens, output_lens)]
    block = 16  # any size: the cache holds every request at its full length at once
    sched = make_scheduler(sum(-(-t // block) for t in totals), block, max(totals),
                           max_num_seqs, budget)
    prompt_len = dict(zip(ids, prompt_lens))
    steps: list[list[tuple[str, int, str]]] = []

    def record(step, out):
        steps.append([(s.request_id, s.num_new_tokens,
                       "decode" if s.start >= prompt_len[s.request_id] else "prefill")
                      for s in out.scheduled])

    finish = replay(sched, [(a, fake_request(r, p, o)) for a, r, p, o in
                            zip(arrival_steps, ids, prompt_lens, output_lens)], record)
    return Timeline(steps, dict(zip(ids, arrival_steps)), finish)


def simulate_static(prompt_lens, output_lens, batch_size: int, ids=None) -> Timeline:
    """Static batching: consecutive batches of ``batch_size``; a batch starts when the one
    before it has finished, and runs as many steps as its longest output. A row whose
    output is complete keeps being computed ("padding") until its batch ends.

    Every request is there from step 0, so a request of a later batch waits.
    """
    _check_lengths(prompt_lens, output_lens)
    _check_batch_size(batch_size)
    n = len(prompt_lens)
    ids = [f"r{i}" for i in range(n)] if ids is None else list(ids)
    steps: list[list[tuple[str, int, str]]] = []
    finish: dict[str, int] = {}
    for start in range(0, n, batch_size):
        batch = range(start, min(start + batch_size, n))
        width = max(prompt_lens[i] for i in batch)
        for k in range(max(output_lens[i] for i in batch)):
            step = []
            for i in batch:
                if k == 0:
                    step.append((ids[i], width, "prefill"))  # left-padded to the widest
                else:
                    step.append((ids[i], 1, "decode" if k < output_lens[i] else "padding"))
                if k == output_lens[i] - 1:
                    finish[ids[i]] = len(steps)
            steps.append(step)
    return Timeline(steps, {r: 0 for r in ids}, finish)


def static_batching_steps(output_lens, batch_size: int) -> int:
    """Forward passes static batching needs: the sum, over consecutive batches of
    ``batch_size``, of the longest output in the batch (the prefill pass yields the
    first token, each decode pass one more)."""
    _check_batch_size(batch_size)
    return sum(max(output_lens[s:s + batch_size]) for s in range(0, len(output_lens), batch_size))


def continuous_batching_steps(output_lens, max_num_seqs: int, prompt_lens=None,
                              max_num_batched_tokens: int | None = None) -> int:
    """Engine steps continuous batching needs for requests that all arrive at step 0.

    Prompt lengths matter only when a token budget is given."""
    prompt_lens = [1] * len(output_lens) if prompt_lens is None else prompt_lens
    return simulate_continuous(prompt_lens, output_lens, max_num_seqs,
                               max_num_batched_tokens).num_steps


def static_slot_usage(prompt_lens, output_lens, batch_size: int) -> dict:
    """Token slots a padded static batch computes, split into useful and padding.

    Prompts are left-padded to the longest prompt of their batch; every row runs
    as many steps as the longest output. Returns ints: prompt_tokens, prompt_padding,
    output_tokens, output_padding, computed (their sum), useful, steps.
    """
    _check_lengths(prompt_lens, output_lens)
    _check_batch_size(batch_size)
    usage = dict.fromkeys(("prompt_tokens", "prompt_padding", "output_tokens",
                           "output_padding"), 0)
    for s in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[s:s + batch_size], output_lens[s:s + batch_size]
        usage["prompt_tokens"] += sum(p)
        usage["prompt_padding"] += len(p) * max(p) - sum(p)
        usage["output_tokens"] += sum(o)
        usage["output_padding"] += len(o) * max(o) - sum(o)
    usage["useful"] = usage["prompt_tokens"] + usage["output_tokens"]
    usage["computed"] = usage["useful"] + usage["prompt_padding"] + usage["output_padding"]
    usage["steps"] = static_batching_steps(output_lens, batch_size)
    return usage


# codes of static_layout's cells
EMPTY, PROMPT_PAD, PROMPT, OUTPUT, OUTPUT_PAD = 0, 1, 2, 3, 4
LAYOUT_COLORS = ["white", "0.55", "C1", "C0", "0.82"]
LAYOUT_LABELS = ["", "prompt left padding", "prompt", "output", "output padding (finished)"]


def static_layout(prompt_lens, output_lens, batch_size: int) -> np.ndarray:
    """The padded token grid of static batching, one row per request.

    Columns are token positions in the batch: the prompt, left-padded to the
    batch's widest prompt, then the generated tokens, padded to the batch's
    longest output. Cells hold EMPTY, PROMPT_PAD, PROMPT, OUTPUT or OUTPUT_PAD;
    EMPTY marks columns beyond this row's batch (other batches are wider).
    """
    _check_lengths(prompt_lens, output_lens)
    _check_batch_size(batch_size)
    n = len(prompt_lens)
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    width = max(max(prompt_lens[i] for i in b) + max(output_lens[i] for i in b) for b in batches)
    grid = np.full((n, width), EMPTY, dtype=np.int8)
    for b in batches:
        pw = max(prompt_lens[i] for i in b)
        ow = max(output_lens[i] for i in b)
        for i in b:
            grid[i, :pw - prompt_lens[i]] = PROMPT_PAD
            grid[i, pw - prompt_lens[i]:pw] = PROMPT
            grid[i, pw:pw + output_lens[i]] = OUTPUT
            grid[i, pw + output_lens[i]:pw + ow] = OUTPUT_PAD
    return grid


# ---- figures ------------------------------------------------------------------------------
def plot_timeline(timeline: Timeline, ax=None, title: str | None = None,
                  show_waiting: bool = True):
    """Gantt chart: x = engine step, one row per request (first arrival on top), a cell
    coloured by what the request did in that step (prefill, decode, padding); light
    grey from its arrival to its first step: waiting for a seat. Returns the Figure."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    ax = new_ax(ax, (10, 0.3 * len(timeline.arrival_step) + 1.6))
    rows = timeline.request_ids
    y = {r: k for k, r in enumerate(rows)}
    cells: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for s, step in enumerate(timeline.steps):
        for rid, _, kind in step:
            cells.setdefault((rid, kind), []).append((s, 1))
    if show_waiting:
        for rid in rows:
            try:
                first = timeline.first_step(rid)
            except StopIteration:
                continue
            wait = first - timeline.arrival_step[rid]
            if wait > 0:
                ax.broken_barh([(timeline.arrival_step[rid], wait)], (y[rid] - 0.4, 0.8),
                               facecolors=WAITING_COLOR)
    for (rid, kind), spans in cells.items():
        ax.broken_barh(spans, (y[rid] - 0.4, 0.8), facecolors=KIND_COLORS[kind],
                       edgecolors="white", linewidth=0.5)
    kinds = {kind for (_, kind) in cells}
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in ("prefill", "decode", "padding")
               if k in kinds]
    if show_waiting:
        handles.append(Patch(color=WAITING_COLOR, label="waiting for a seat"))
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, max(timeline.num_steps, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="engine step", ylabel="request",
           title=title or f"{timeline.num_steps} steps")
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(True, axis="x", alpha=0.3)
    return ax.figure


def plot_static_vs_continuous(prompt_lens, output_lens, batch_size: int, fig=None):
    """Two Gantt charts on one step axis: static batches of ``batch_size`` above,
    continuous batching with max_num_seqs = ``batch_size`` below. Returns the Figure."""
    from matplotlib.figure import Figure

    static = simulate_static(prompt_lens, output_lens, batch_size)
    cont = simulate_continuous(prompt_lens, output_lens, batch_size)
    n = len(prompt_lens)
    if fig is None:
        fig = Figure(figsize=(10, 0.5 * n + 2.5), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    pad = sum(1 for step in static.steps for _, _, k in step if k == "padding")
    plot_timeline(static, ax1, f"static batching, batches of {batch_size}: "
                  f"{static.num_steps} steps, {pad} decode slots of padding")
    plot_timeline(cont, ax2, f"continuous batching, max_num_seqs={batch_size}: "
                  f"{cont.num_steps} steps, no padding")
    ax2.set_xlim(0, max(static.num_steps, cont.num_steps))
    return fig


def plot_static_padding(prompt_lens, output_lens, batch_size: int, ax=None):
    """The padded token grid of static batching (``static_layout``), with the share of
    computed slots that is padding in the title. Returns the Figure."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    grid = static_layout(prompt_lens, output_lens, batch_size)
    u = static_slot_usage(prompt_lens, output_lens, batch_size)
    ax = new_ax(ax, (9, 0.3 * len(prompt_lens) + 1.8))
    ax.imshow(grid, cmap=ListedColormap(LAYOUT_COLORS), vmin=0, vmax=len(LAYOUT_COLORS) - 1,
              aspect="auto", interpolation="nearest")
    n = len(prompt_lens)
    for s in range(batch_size, n, batch_size):
        ax.axhline(s - 0.5, color="black", linewidth=1)
    waste = u["computed"] - u["useful"]
    ax.set(xlabel="token position in the padded batch", ylabel="request",
           title=f"static batches of {batch_size}: {u['computed']} token slots computed, "
                 f"{waste} of them padding ({waste / u['computed']:.0%})")
    ax.set_yticks(range(n), [f"r{i}" for i in range(n)])
    ax.legend(handles=[Patch(color=c, label=lab) for c, lab in
                       zip(LAYOUT_COLORS[1:], LAYOUT_LABELS[1:])],
              fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    return ax.figure


def plot_stats(timeline: Timeline, max_num_seqs: int | None = None, fig=None):
    """What ``engine.get_stats()`` said after each step of a recorded run: running and
    waiting requests (left), tokens in the step and KV blocks in use (right)."""
    from matplotlib.figure import Figure

    if not timeline.stats:
        raise ValueError("this timeline has no stats; record it with record_timeline")
    fig = fig or Figure(figsize=(10, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(timeline.num_steps)

    def series(key):
        return [s[key] for s in timeline.stats]

    ax1.step(x, series("num_running"), where="post", label="num_running")
    ax1.step(x, series("num_waiting"), where="post", label="num_waiting")
    if max_num_seqs is not None:
        ax1.axhline(max_num_seqs, color="0.5", linestyle=":", label="max_num_seqs")
    ax1.set(xlabel="engine step", ylabel="requests", title="seats and queue (after the step)")
    ax1.legend(fontsize=8)
    ax2.bar(x, series("num_batched_tokens_last_step"), color="C2", width=0.9,
            label="num_batched_tokens_last_step")
    ax2.set(xlabel="engine step", ylabel="tokens in the step", yscale="log",
            title="work per step, and KV blocks in use")
    twin = ax2.twinx()
    twin.step(x, series("kv_blocks_used"), where="post", color="C3", label="kv_blocks_used")
    twin.set_ylabel("KV blocks used")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    return fig


def plot_throughput(results: list[dict], fig=None, title: str = ""):
    """Left: output tokens/s against max_num_seqs, with the ideal (perfectly linear) line
    from the smallest one. Right: milliseconds per engine step. ``results`` as returned
    by ``measure_throughput``. Returns the Figure."""
    from matplotlib.figure import Figure

    fig = fig or Figure(figsize=(10, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    b = np.array([r["max_num_seqs"] for r in results])
    tps = np.array([r["tok_s"] for r in results])
    ax1.plot(b, tps, "o-", label="measured")
    ax1.plot(b, tps[0] * b / b[0], ":", color="0.5", label="if a step cost the same at any size")
    ax1.set(xscale="log", yscale="log", xlabel="max_num_seqs", ylabel="output tokens/s",
            title=title or "throughput")
    ax1.set_xticks(b, [str(v) for v in b])
    ax1.legend(fontsize=8)
    ax2.plot(b, [r["ms_per_step"] for r in results], "o-", color="C3",
             label="all steps (mean, prefills included)")
    full = [(v, r["full_decode_ms"]) for v, r in zip(b, results)
            if r.get("full_decode_ms") is not None]
    if full:
        ax2.plot(*zip(*full), "s--", color="C0", label="decode steps, every seat busy (median)")
    ax2.set(xscale="log", xlabel="max_num_seqs", ylabel="ms per engine step",
            title="cost of one step", ylim=(0, None))
    ax2.legend(fontsize=8)
    ax2.set_xticks(b, [str(v) for v in b])
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_static_vs_continuous_measured(static: dict, continuous: dict, ax=None):
    """Bars of measured output tokens/s (with step counts) for ``run_static`` and
    ``run_continuous`` results. Returns the Figure."""
    ax = new_ax(ax, (5, 3.2))
    names = ["static batches", "continuous"]
    vals = [static["tok_s"], continuous["tok_s"]]
    bars = ax.bar(names, vals, color=["0.6", "C0"])
    for bar, run in zip(bars, (static, continuous)):
        ax.annotate(f"{run['tok_s']:.0f} tok/s\n{run['steps']} steps",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="output tokens/s (measured)", ylim=(0, max(vals) * 1.3),
           title="same requests, same engine")
    return ax.figure


def batching_explorer(prompt_lens, output_lens, max_batch: int | None = None):
    """A slider over the batch size that redraws ``plot_static_vs_continuous``.

    A thin wrapper: headless runs never move the slider, so draw the static figure too.
    """
    import ipywidgets as widgets
    from IPython.display import display

    slider = widgets.IntSlider(value=min(4, len(prompt_lens)), min=1,
                               max=max_batch or len(prompt_lens),
                               description="batch size")
    out = widgets.Output()

    def redraw(change=None):
        out.clear_output(wait=True)
        with out:
            display(plot_static_vs_continuous(prompt_lens, output_lens, slider.value))

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])
