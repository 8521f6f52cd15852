"""Checks for notebooks/06_cuda_forward_pass.ipynb (milestone M4).

The exercises: which CUDA-graph bucket a decode batch runs in and how many padding rows
it gets; one online-softmax merge step of PagedAttention; and how much faster a
launch-bound decode step gets when a CUDA graph replays it. The references are
folo_edu.engine.cuda_graphs.bucket_of (what DecodeGraphRunner.bucket runs),
viz.decode_attention.online_softmax_merge, and the step-time model of
viz.op_overhead.model_step_time (step = launches x launch cost + work).
"""
from __future__ import annotations

import math

from folo_edu.engine.cuda_graphs import bucket_of, graph_batch_sizes
from folo_edu.labs import hint, not_answered, report_pass, require_number
from folo_edu.viz.decode_attention import online_softmax_merge

# Exercise 1: 37 requests decode in an engine with max_num_seqs = 64.
EXERCISE_BATCH = 37
EXERCISE_MAX_BATCH = 64
# Exercise 2: running max 2.0 and running sum 3.0, then a tile with these scores.
EXERCISE_MAX, EXERCISE_SUM = 2.0, 3.0
EXERCISE_SCORES = (1.0, 4.0, 3.0)
# Exercise 3: a decode step of 600 kernels, 8 µs to launch each, 1.2 ms of GPU work.
EXERCISE_KERNELS = 600
EXERCISE_LAUNCH_US = 8.0
EXERCISE_WORK_MS = 1.2


def check_bucket(answer, batch: int = EXERCISE_BATCH, max_batch: int = EXERCISE_MAX_BATCH) -> bool:
    """Check the captured batch size (bucket) a decode batch of ``batch`` runs in."""
    sizes = graph_batch_sizes(max_batch)
    what = f"the bucket of a decode batch of {batch} (buckets {sizes})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = bucket_of(batch, sizes)
    if answer == expected:
        return report_pass(f"{what} = {expected}, the smallest bucket >= {batch}")
    smaller = [s for s in sizes if s < batch]
    hints = [
        (batch, "a graph replays fixed shapes, so a batch must run in one of the captured "
                "sizes"),
        (max_batch, "that is the largest bucket; the runner picks the smallest that fits"),
        (-(-batch // 8) * 8, "the buckets are not multiples of 8: above 8 they step by 16"),
    ]
    if 2 ** math.ceil(math.log2(batch)) not in (expected, max_batch):
        hints.append((2 ** math.ceil(math.log2(batch)), "the buckets are powers of 2 only up "
                                                        "to 16, then multiples of 16"))
    if smaller:
        hints.append((smaller[-1], "that bucket is too small: the batch must fit in it"))
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "take the smallest captured batch size that is >= the batch"))


def check_padding_rows(answer, batch: int = EXERCISE_BATCH,
                       max_batch: int = EXERCISE_MAX_BATCH) -> bool:
    """Check how many padding rows a decode batch of ``batch`` gets in its bucket."""
    sizes = graph_batch_sizes(max_batch)
    what = f"the padding rows of a decode batch of {batch} (buckets {sizes})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    bucket = bucket_of(batch, sizes)
    expected = bucket - batch
    if answer == expected:
        return report_pass(f"{what} = {bucket} - {batch} = {expected} (slot -1, seq_len 0: "
                           "they store nothing and read nothing)")
    smaller = [s for s in sizes if s < batch]
    hints = [
        (0, "a graph replays the shapes it captured: the batch is padded up to its bucket"),
        (max_batch - batch, "that pads to the largest bucket; the runner picks the smallest "
                            "that fits"),
        (bucket, "that is the bucket itself; padding is bucket - batch"),
    ]
    if smaller:
        hints.append((batch - smaller[-1], "that is how far the batch is above the bucket "
                                           "below it; pad up to the next one"))
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "padding rows = (smallest bucket >= batch) - batch"))


def check_online_softmax(new_max, new_sum, m: float = EXERCISE_MAX, l: float = EXERCISE_SUM,
                         scores=EXERCISE_SCORES) -> bool:
    """Check one online-softmax step: the running max and sum after folding in a tile."""
    scores = list(scores)
    what = f"the running max and sum after the tile {scores} (from max {m}, sum {l})"
    if new_max is None or new_sum is None:
        return not_answered(what)
    require_number(what + " (max)", new_max)
    require_number(what + " (sum)", new_sum)
    m_new, l_new = online_softmax_merge(m, l, scores)
    if not math.isclose(new_max, m_new, rel_tol=1e-6, abs_tol=1e-9):
        hints = [(m, "the tile has a larger score: the new max is the larger of the two"),
                 (sum(scores), "the max of the scores, not their sum")]
        raise AssertionError(f"{what}: max {new_max!r} is not right; " + hint(
            new_max, hints, "new max = max(running max, largest score of the tile)"))
    if math.isclose(new_sum, l_new, rel_tol=1e-3):
        return report_pass(f"{what}: max {m_new:g}, sum {l} x exp({m:g} - {m_new:g}) + "
                           f"sum(exp(s - {m_new:g})) = {l_new:.4f}")
    no_rescale = l + sum(math.exp(s - m_new) for s in scores)
    old_max = l + sum(math.exp(s - m) for s in scores)
    flipped = l * math.exp(m_new - m) + sum(math.exp(s - m_new) for s in scores)
    raw = l + sum(math.exp(s) for s in scores)
    tile_only = sum(math.exp(s - m_new) for s in scores)
    hints = [
        (no_rescale, "the running sum was taken under the old max: rescale it by "
                     "exp(old max - new max) before adding"),
        (old_max, "the tile's terms must use the new max, exp(s - new max), like the "
                  "rescaled running sum"),
        (flipped, "the rescale factor is exp(old max - new max), at most 1, not its inverse"),
        (raw, "subtract the max inside every exp(); that is what keeps it from overflowing"),
        (tile_only, "that is the tile alone: add the rescaled running sum"),
    ]
    raise AssertionError(f"{what}: sum {new_sum!r} is not right; " + hint(
        new_sum, hints, "new sum = sum x exp(old max - new max) + sum over the tile of "
                        "exp(s - new max)", tol=1e-3))


def check_graph_speedup(answer, kernels: int = EXERCISE_KERNELS,
                        launch_us: float = EXERCISE_LAUNCH_US,
                        work_ms: float = EXERCISE_WORK_MS) -> bool:
    """Check eager step time / CUDA-graph step time under step = launches x cost + work."""
    what = (f"the speed-up of a step of {kernels} kernels ({launch_us:g} µs per launch, "
            f"{work_ms:g} ms of GPU work) replayed as one CUDA graph")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    launch_ms = launch_us * 1e-3
    eager = kernels * launch_ms + work_ms  # every kernel launched from the host
    graph = launch_ms + work_ms            # one launch replays them all
    expected = eager / graph
    if math.isclose(answer, expected, rel_tol=0.01):
        return report_pass(f"{what} = {eager:.2f} ms / {graph:.3f} ms = {expected:.2f}x")
    launches_ms = kernels * launch_ms
    hints = [
        (launches_ms / work_ms, "that is launches / work; compare whole steps: "
                                "(launches + work) / (one launch + work)"),
        (graph / eager, "upside down: eager time / graph time"),
        (kernels - 1, "that is the launches saved, not the speed-up"),
        (launches_ms, "that is the milliseconds of launches saved, not the speed-up"),
        ((launches_ms + work_ms) / launches_ms, "the graph still does the work: divide by "
                                                "one launch + the work"),
    ]
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "eager = kernels x launch + work; graph = 1 launch + work; "
                       "speed-up = eager / graph", tol=0.01))
