"""The notebook 04 lab: check_plan_step accepts a right planner (inside a real engine with
arrivals, whose tokens equal the reference engine's and transformers'), names each common
bug, says "not answered" for None and for the stub."""
from __future__ import annotations

import pytest

from folo_edu.labs import LabCheckFailed
from folo_edu.labs.m1_sampling import tiny_lab_model
from folo_edu.labs.m2_batching import (check_plan_step, lab_arrivals, plan_in_engine,
                                       plan_lab_engine, reference_plan)
from folo_edu.viz.batching import record_timeline


def plan(running, waiting, budget, max_num_seqs, chunked, running_first=True, seats=True,
         use_budget=True, fcfs=True, decodes_first=True, chunk=None):
    """A planner with the common bugs as switches."""
    chunk = chunked if chunk is None else chunk
    out = []

    def take(left):
        if not use_budget or left <= budget:
            return left
        return budget if chunk else 0

    order = sorted(running, key=lambda r: r[1] > 1) if decodes_first else list(running)
    groups = [("run", order), ("wait", waiting)]
    if not running_first:
        groups.reverse()
    free = max_num_seqs - len(running)
    for kind, group in groups:
        for rid, left in group:
            n = take(left)
            if kind == "wait" and (seats and free == 0 or n == 0):
                if fcfs:
                    break
                continue
            if n:
                out.append((rid, n))
                budget -= n
                free -= kind == "wait"
    return out


def test_right_answer_passes_in_the_engine_and_none_is_not_answered(capsys):
    assert check_plan_step(plan) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "reference engine and transformers" in out
    assert check_plan_step(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert check_plan_step(lambda *args: None) is False  # the stub
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    (dict(running_first=False), "running requests"),
    (dict(seats=False), "max_num_seqs"),
    (dict(use_budget=False), "the budget is"),
    (dict(fcfs=False), "first come first served"),
    (dict(decodes_first=False), "decodes first"),
    (dict(chunk=False), "takes what is left of the budget"),
    (dict(chunk=True), "all or nothing"),
])
def test_named_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_plan_step(lambda *args: plan(*args, **bug))


def test_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="list of \\(request_id, num_tokens\\) pairs"):
        check_plan_step(lambda *a: [1, 2])
    with pytest.raises(LabCheckFailed, match="leave out a request that gets none"):
        check_plan_step(lambda r, w, *a: [(rid, 0) for rid, _ in r + w])
    with pytest.raises(LabCheckFailed, match="neither running nor waiting"):
        check_plan_step(lambda *a: [("zz", 1)])
    with pytest.raises(LabCheckFailed, match="raised KeyError"):
        check_plan_step(lambda *a: {}["x"])


def test_the_seam_catches_a_bad_plan_in_the_engine_and_restores_the_scheduler():
    engine = plan_lab_engine(tiny_lab_model(), chunked=True)
    old = engine.scheduler
    with pytest.raises(LabCheckFailed, match="engine step \\d+"):
        with plan_in_engine(engine, lambda *a: plan(*a, use_budget=False)):
            record_timeline(engine, lab_arrivals())
    assert engine.scheduler is old and not engine.has_unfinished_requests()
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
    # unchecked, the learner's plan runs the engine the same way as the package's rule
    with plan_in_engine(engine, reference_plan, check=False):
        ours = record_timeline(engine, lab_arrivals())
    theirs = record_timeline(plan_lab_engine(tiny_lab_model(), chunked=True), lab_arrivals())
    assert ours.steps == theirs.steps and ours.token_ids == theirs.token_ids
