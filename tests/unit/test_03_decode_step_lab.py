"""The notebook 03 lab: check_decode_step accepts a right decode step (inside a real
engine whose greedy tokens equal transformers'), names each common bug, says "not
answered" for None."""
from __future__ import annotations

import math

import pytest
import torch

from folo_edu.labs import LabCheckFailed
from folo_edu.labs.m1_forward import check_decode_step, time_decode_steps
from folo_edu.labs.m1_sampling import tiny_lab_model


def step(q, k, v, k_cache, v_cache, pos, slot=0, end=1, repeat="interleave", scale=None,
         write=True):
    """A decode step with the common bugs as switches: ``slot`` and ``end`` shift where K/V
    are written and which slots are read (relative to pos), end=None reads the whole cache."""
    if write:
        k_cache[pos + slot], v_cache[pos + slot] = k, v
    group = q.shape[0] // k.shape[0]
    keys, values = (k_cache, v_cache) if end is None else (k_cache[:pos + end], v_cache[:pos + end])
    if repeat == "interleave":
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    else:
        keys, values = keys.repeat(1, group, 1), values.repeat(1, group, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    weights = (torch.einsum("hd,shd->hs", q, keys) * scale).softmax(-1)
    return torch.einsum("hs,shd->hd", weights, values)


def test_right_answer_passes_in_the_engine_and_none_is_not_answered(capsys):
    assert check_decode_step(step) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "same 30 greedy tokens as transformers" in out
    assert check_decode_step(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert check_decode_step(lambda q, k, v, k_cache, v_cache, pos: None) is False  # the stub
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    (dict(scale=1.0), "1 / sqrt"),
    (dict(repeat="tile"), "repeat_interleave"),
    (dict(end=None), "whole cache"),
    (dict(end=0), "attend to itself"),
    (dict(slot=1), "pos \\+ 1"),
    (dict(write=False), "in place"),
])
def test_named_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_decode_step(lambda *args: step(*args, **bug))


def test_other_wrong_answers():
    def no_write_copy(q, k, v, k_cache, v_cache, pos):
        k_cache = torch.cat([k_cache[:pos], k[None]])  # rebinds the name: the cache is unchanged
        v_cache = torch.cat([v_cache[:pos], v[None]])
        return step(q, k, v, k_cache.clone(), v_cache.clone(), pos)

    with pytest.raises(LabCheckFailed, match="in place"):
        check_decode_step(no_write_copy)
    with pytest.raises(LabCheckFailed, match="shape|expected a tensor"):
        check_decode_step(lambda *args: step(*args)[0])
    with pytest.raises(LabCheckFailed, match="raised IndexError"):
        check_decode_step(lambda q, *rest: q[99])
    with pytest.raises(LabCheckFailed, match="not a function"):
        check_decode_step("attention")


def test_time_decode_steps_runs_the_learner_step_in_the_engine():
    calls = []

    def counted(*args):
        calls.append(args[-1])
        return step(*args)

    result = time_decode_steps(tiny_lab_model(), counted, prompt_len=4, num_tokens=6,
                               dtype="float64")
    assert result["context"] == [5, 6, 7, 8, 9]
    assert len(result["seconds"]) == 5 and calls[:2] == [4, 4]  # 2 layers at position 4
