"""The notebook 05 lab: check_allocate_slots accepts a right block allocator (inside a real
engine that preempts, with the reference engine's tokens, no leak and no block held twice),
names each common bug, says "not answered" for None and for the stub."""
from __future__ import annotations

import pytest

from folo_edu.labs import LabCheckFailed
from folo_edu.labs.m1_sampling import tiny_lab_model
from folo_edu.labs.m3_paged import (allocator_in_engine, check_allocate_slots, lab_engine,
                                    measure_cache_sizes, reference_allocate)


def allocate(table, num_computed, num_new, block_size, free_blocks, rounding="ceil",
             tokens="all", partial=False, subtract=True, pick="front"):
    """An allocator with the common bugs as switches."""
    n = num_computed + num_new if tokens == "all" else num_new
    blocks = -(-n // block_size) if rounding == "ceil" else n // block_size
    need = blocks - (len(table) if subtract else 0)
    if need > len(free_blocks):
        if not partial:
            return None
        need = len(free_blocks)
    need = max(need, 0)
    if pick == "held":
        return (table + free_blocks)[:need]
    if pick == "back":
        return free_blocks[len(free_blocks) - need:]
    return free_blocks[:need]


def test_right_answer_passes_in_the_engine_and_none_is_not_answered(capsys):
    assert check_allocate_slots(allocate) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "no block was held twice and none leaked" in out
    assert "0 preemptions" not in out
    assert check_allocate_slots(reference_allocate) is True
    capsys.readouterr()
    assert check_allocate_slots(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert check_allocate_slots(lambda *args: None) is False  # the stub
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    (dict(rounding="floor"), "rounded down"),
    (dict(tokens="new"), "num_computed \\+ num_new, not for num_new alone"),
    (dict(partial=True), "return None and take none"),
    (dict(subtract=False), "already holds len\\(table\\) blocks"),
    (dict(pick="held"), "already in this request's table"),
    (dict(pick="back"), "FIRST blocks of free_blocks"),
])
def test_named_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_allocate_slots(lambda *args: allocate(*args, **bug))


def test_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="return None \\(an empty list"):
        check_allocate_slots(lambda *a: allocate(*a) or [])
    with pytest.raises(LabCheckFailed, match="not in free_blocks"):
        check_allocate_slots(lambda t, c, n, bs, free: allocate(t, c, n, bs, [99] + free[1:]))
    with pytest.raises(LabCheckFailed, match="raised ZeroDivisionError"):
        check_allocate_slots(lambda *a: 1 // 0)
    with pytest.raises(LabCheckFailed, match="is not a function"):
        check_allocate_slots(3)


def test_the_seam_restores_the_engine_and_checks_in_the_run():
    engine = lab_engine(tiny_lab_model())
    kv = engine.kv_manager
    with pytest.raises(LabCheckFailed, match="rounded down"):
        with allocator_in_engine(engine, lambda *a: allocate(*a, rounding="floor")):
            engine.add_request("x", {"prompt_token_ids": [5] * 9},
                               __import__("folo_edu").SamplingParams(max_tokens=2))
            engine.step()
    assert engine.kv_manager is kv and engine.scheduler.kv is kv


def test_measure_cache_sizes_runs_the_learner_allocator():
    rows = measure_cache_sizes(tiny_lab_model(), allocate, num_kv_blocks=(12, 40))
    assert [r["num_kv_blocks"] for r in rows] == [12, 40]
    assert rows[0]["preemptions"] > 0 and rows[1]["preemptions"] == 0
    assert rows[0]["steps"] > rows[1]["steps"]
