"""Checks for notebooks/04_continuous_batching.ipynb (milestone M2).

The exercise: for given output lengths and a batch size, how many engine steps
(forward passes) does static batching need, and how many does continuous batching
need? The references are folo_edu.viz.batching.static_batching_steps and
continuous_batching_steps, the second of which is checked against the real
scheduler in tests/unit/test_04_labs_and_viz.py.
"""
from __future__ import annotations

import math

from folo_edu.labs import hint, not_answered, report_pass, require_number
from folo_edu.viz.batching import continuous_batching_steps, static_batching_steps

# The exercise's requests: output lengths of r0..r5, served with 3 seats.
EXERCISE_OUTPUT_LENS = (6, 2, 3, 7, 1, 4)
EXERCISE_BATCH_SIZE = 3


def _common_hints(answer, output_lens, batch_size) -> list[tuple[int, str]]:
    total = sum(output_lens)
    return [
        (total, "that is one request at a time: with several seats, requests share a step"),
        (math.ceil(total / batch_size), "that is perfect packing, every seat busy in every "
                                        "step; a request's tokens come one per step, so they "
                                        "cannot be spread over several seats"),
        (max(output_lens), "that is one batch holding every request; there are only "
                           f"{batch_size} seats"),
    ]


def check_static_steps(answer, output_lens=EXERCISE_OUTPUT_LENS,
                       batch_size: int = EXERCISE_BATCH_SIZE) -> bool:
    """Check the number of steps static batching needs: consecutive batches of
    ``batch_size``, each running until its longest member is done."""
    output_lens = list(output_lens)
    what = f"steps of static batching (batches of {batch_size}, outputs {output_lens})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = static_batching_steps(output_lens, batch_size)
    if answer == expected:
        return report_pass(f"{what} = {expected}")
    batches = [output_lens[s:s + batch_size] for s in range(0, len(output_lens), batch_size)]
    hints = _common_hints(answer, output_lens, batch_size) + [
        (expected + len(batches), "one step per batch too many: the prefill step already "
                                  "yields each request's first token"),
    ]
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "add up, batch by batch, the longest output in each batch"))


def check_continuous_steps(answer, output_lens=EXERCISE_OUTPUT_LENS,
                           max_num_seqs: int = EXERCISE_BATCH_SIZE) -> bool:
    """Check the number of steps continuous batching needs when every request is there
    at step 0, with ``max_num_seqs`` seats and a token budget that never binds."""
    output_lens = list(output_lens)
    what = (f"steps of continuous batching (max_num_seqs={max_num_seqs}, "
            f"outputs {output_lens})")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = continuous_batching_steps(output_lens, max_num_seqs)
    if answer == expected:
        lower = math.ceil(sum(output_lens) / max_num_seqs)
        return report_pass(f"{what} = {expected} (static batching: "
                           f"{static_batching_steps(output_lens, max_num_seqs)}; no schedule "
                           f"can do better than {lower})")
    hints = [(static_batching_steps(output_lens, max_num_seqs),
              "that is static batching: here a finished request's seat is given to the "
              "next waiting request at the very next step")]
    hints += _common_hints(answer, output_lens, max_num_seqs)
    hints += [(expected + len(output_lens), "a newcomer's prefill is not a step of its own: it "
                                            "runs in the same step as the others' decodes, "
                                            "and yields its first token")]
    raise AssertionError(f"{what}: {answer!r} is not right; " + hint(
        answer, hints,
        "play it step by step: each step every running request gains one token; one that "
        "reaches its length leaves, and the first waiting request takes its seat next step"))
