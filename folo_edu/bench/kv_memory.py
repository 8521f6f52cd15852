"""KV-cache memory waste and concurrency, measured on the real scheduler (M3).

No model and no tensors: the real ``Scheduler`` and ``KVCacheManager`` run a
workload of requests whose lengths are drawn from a long-tailed distribution, and a
fake "model" returns a fixed token each step (``bench.replay``; EOS is ignored, so
every request produces exactly its output length). After every ``schedule()``, the moment the
forward pass would write the KV cache, two numbers are recorded:

    allocated   token slots in the blocks the running requests hold
                (= (num_blocks - free blocks) x tokens_per_block)
    used        slots that hold a token: each running request's
                num_computed_tokens plus the tokens scheduled for it this step

The waste of a run is ``1 - sum(used) / sum(allocated)`` over all its steps: the
share of allocated slot-steps that held nothing (a time average weighted by memory).

The contiguous cache is the same KVCacheManager with ``tokens_per_block =
max_model_len`` (one block per request, reserved for the longest possible
sequence); the paged cache uses ``tokens_per_block = block_size``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from folo_edu.bench.replay import fake_request, make_scheduler, replay


@dataclass(frozen=True)
class LengthDistribution:
    """Lognormal prompt and output lengths, clipped so prompt + output <= max_model_len.

    A lognormal with median m and shape sigma is exp(N(ln m, sigma^2)): most requests
    are short and a few are very long, as in chat traces. Lengths are rounded to
    ints; prompts are clipped to [1, max_model_len - 1], outputs to
    [1, max_model_len - prompt].
    """

    prompt_median: float = 128.0
    prompt_sigma: float = 1.0
    output_median: float = 160.0
    output_sigma: float = 1.0
    max_model_len: int = 2048

    def sample(self, n: int, seed: int = 0) -> list[tuple[int, int]]:
        """``n`` (prompt length, output length) pairs, the same for the same seed."""
        if n < 1:
            raise ValueError(f"n={n!r}: expected at least 1 request")
        rng = np.random.default_rng(seed)
        p = rng.lognormal(math.log(self.prompt_median), self.prompt_sigma, n)
        o = rng.lognormal(math.log(self.output_median), self.output_sigma, n)
        p = np.clip(np.rint(p), 1, self.max_model_len - 1).astype(int)
        o = np.clip(np.rint(o), 1, self.max_model_len - p).astype(int)
        return [(int(a), int(b)) for a, b in zip(p, o)]

    def describe(self) -> str:
        return (f"prompt ~ lognormal(median {self.prompt_median:g}, sigma "
                f"{self.prompt_sigma:g}), output ~ lognormal(median {self.output_median:g}, "
                f"sigma {self.output_sigma:g}), clipped so prompt + output <= "
                f"max_model_len = {self.max_model_len}")


@dataclass
class KVRun:
    """Per-step measurements of one workload on one cache layout."""

    label: str
    tokens_per_block: int
    num_blocks: int
    allocated: np.ndarray          # slots held by running requests, per step
    used: np.ndarray               # slots holding a token, per step
    running: np.ndarray            # running requests, per step
    waiting: np.ndarray            # queued requests, per step
    num_preemptions: int
    scheduled_tokens: int          # tokens computed in all steps (recomputation included)
    ideal_tokens: int              # tokens a run without preemption computes
    extra: dict = field(default_factory=dict)

    @property
    def budget_slots(self) -> int:
        return self.num_blocks * self.tokens_per_block

    @property
    def num_steps(self) -> int:
        return len(self.allocated)

    @property
    def waste_fraction(self) -> float:
        """1 - sum(used) / sum(allocated) over every step (memory-weighted time average)."""
        return 1.0 - float(self.used.sum()) / float(self.allocated.sum())

    @property
    def mean_step_waste(self) -> float:
        """The plain mean over steps of 1 - used / allocated (steps holding nothing skipped)."""
        busy = self.allocated > 0
        return float(np.mean(1.0 - self.used[busy] / self.allocated[busy]))

    @property
    def peak_running(self) -> int:
        return int(self.running.max())

    @property
    def mean_running(self) -> float:
        return float(self.running.mean())

    @property
    def mean_running_while_queued(self) -> float | None:
        """Mean running requests over the steps in which somebody was waiting: the
        concurrency the cache sustains while it is the limit."""
        busy = self.waiting > 0
        return float(self.running[busy].mean()) if busy.any() else None

    @property
    def mean_allocated_fraction(self) -> float:
        """Mean share of the whole cache that is allocated to somebody."""
        return float(self.allocated.mean()) / self.budget_slots

    @property
    def mean_used_fraction(self) -> float:
        """Mean share of the whole cache that holds a token."""
        return float(self.used.mean()) / self.budget_slots

    @property
    def recompute_overhead(self) -> float:
        """Tokens computed again after preemption, as a share of the ideal token count."""
        return self.scheduled_tokens / self.ideal_tokens - 1.0

    def summary(self) -> dict:
        return {
            "label": self.label, "tokens_per_block": self.tokens_per_block,
            "num_blocks": self.num_blocks, "budget_slots": self.budget_slots,
            "steps": self.num_steps,
            "waste_fraction": self.waste_fraction, "mean_step_waste": self.mean_step_waste,
            "peak_running": self.peak_running, "mean_running": self.mean_running,
            "mean_running_while_queued": self.mean_running_while_queued,
            "mean_allocated_fraction": self.mean_allocated_fraction,
            "mean_used_fraction": self.mean_used_fraction,
            "num_preemptions": self.num_preemptions,
            "recompute_overhead": self.recompute_overhead, **self.extra,
        }


def run_workload(lengths, tokens_per_block: int, num_blocks: int, max_model_len: int,
                 max_num_seqs: int = 1024, max_num_batched_tokens: int | None = None,
                 label: str | None = None, max_steps: int = 1_000_000) -> KVRun:
    """Run ``(prompt_len, output_len)`` requests, all queued at step 0, through the real
    Scheduler and KVCacheManager (``bench.replay``), and record allocated and used slots
    at every step.

    A request that could never fit the cache is refused with ValueError, as
    ``LLMEngine.add_request`` does. ``max_num_batched_tokens`` defaults to
    max(max_model_len, 2048), the engine's default without chunked prefill.
    """
    lengths = [(int(p), int(o)) for p, o in lengths]
    budget = max_num_batched_tokens or max(max_model_len, 2048)
    sched = make_scheduler(num_blocks, tokens_per_block, max_model_len, max_num_seqs, budget)
    kv = sched.kv
    for i, (p, o) in enumerate(lengths):
        if p < 1 or o < 1 or p + o > max_model_len:
            raise ValueError(f"request {i}: prompt {p} + output {o} tokens; expected both "
                             f">= 1 and a total <= max_model_len={max_model_len}")
        if kv.blocks_needed(p + o) > num_blocks:
            raise ValueError(f"request {i} needs {kv.blocks_needed(p + o)} blocks of "
                             f"{tokens_per_block} tokens, the cache has {num_blocks}")
    allocated, used, running, waiting, scheduled = [], [], [], [], []

    def measure(step, out):  # the moment the forward pass would write the cache
        held = kv.num_blocks - kv.num_free_blocks
        assert held == sum(len(t) for t in kv.block_tables.values())
        allocated.append(held * tokens_per_block)
        used.append(sum(r.num_computed_tokens for r in sched.running) + out.num_batched_tokens)
        assert used[-1] <= allocated[-1], (used[-1], allocated[-1])
        running.append(len(sched.running))
        waiting.append(len(sched.waiting))
        scheduled.append(out.num_batched_tokens)

    replay(sched, [(0, fake_request(f"r{i}", p, o)) for i, (p, o) in enumerate(lengths)],
           measure, max_steps=max_steps)
    assert kv.num_free_blocks == kv.num_blocks
    return KVRun(label or f"{tokens_per_block} tokens/block", tokens_per_block, num_blocks,
                 np.array(allocated), np.array(used), np.array(running), np.array(waiting),
                 sched.num_preemptions, sum(scheduled),
                 sum(p + o - 1 for p, o in lengths))


def analytic_concurrency(lengths, tokens_per_block: int, budget_slots: int) -> dict:
    """How many requests of these lengths fit ``budget_slots`` token slots, on paper.

    at_final_length   budget / mean slots a request holds at its full length
                      (every request could run to its end without preemption)
    time_average      budget / mean slots a request holds over its life, weighting each
                      length by the steps spent at it (Little's law: the steady-state
                      number running when the cache is the only limit)
    For the contiguous cache (tokens_per_block = max_model_len) both are
    budget // max_model_len.
    """
    bs = tokens_per_block
    final = [-(-(p + o) // bs) * bs for p, o in lengths]
    total, steps = 0, 0
    for p, o in lengths:
        # in its k-th step (k = 0..o-1) the request has p + k tokens in the cache
        total += sum(-(-(p + k) // bs) * bs for k in range(o))
        steps += o
    return {"at_final_length": budget_slots / float(np.mean(final)),
            "time_average": budget_slots / (total / steps),
            "mean_slots_at_final_length": float(np.mean(final)),
            "mean_slots_over_life": total / steps}


def measure(lengths, max_model_len: int, budget_slots: int, block_sizes=(8, 16, 32),
            max_num_seqs: int = 1024, max_num_batched_tokens: int | None = None,
            return_runs: bool = False):
    """The contiguous cache and the paged cache at each block size, on one KV budget
    of ``budget_slots`` token slots (the same bytes for every layout).

    Returns one summary dict per layout (see ``KVRun.summary``), each with the
    analytic concurrency (``analytic_concurrency``) added, contiguous first. With
    ``return_runs`` it returns ``(rows, runs)``, the KVRun of each layout too.
    """
    layouts = [("contiguous", max_model_len)] + [(f"paged, block {b}", b) for b in block_sizes]
    rows, runs = [], []
    for label, tpb in layouts:
        if budget_slots % tpb:
            raise ValueError(f"budget_slots={budget_slots} is not a multiple of "
                             f"{tpb} tokens per block")
        run = run_workload(lengths, tpb, budget_slots // tpb, max_model_len, max_num_seqs,
                           max_num_batched_tokens, label=label)
        row = run.summary()
        row["analytic_concurrency"] = analytic_concurrency(lengths, tpb, budget_slots)
        rows.append(row)
        runs.append(run)
    return (rows, runs) if return_runs else rows


def length_stats(lengths) -> dict:
    p = np.array([a for a, _ in lengths])
    o = np.array([b for _, b in lengths])
    t = p + o

    def s(x):
        return {"mean": float(x.mean()), "median": float(np.median(x)),
                "p90": float(np.percentile(x, 90)), "max": int(x.max()), "min": int(x.min())}
    return {"n": len(lengths), "prompt": s(p), "output": s(o), "total": s(t)}
