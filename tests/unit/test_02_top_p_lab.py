"""The notebook 02 lab: check_top_p_filter accepts a right top-p filter, names each
common bug, says "not answered" for None; and the Sampler's top_p_fn seam."""
from __future__ import annotations

import pytest
import torch

from folo_edu.labs import LabCheckFailed
from folo_edu.labs.m1_sampling import TOP_P_LOGITS, check_top_p_filter
from folo_edu.sample import Sampler, SamplingMetadata, apply_top_p
from folo_edu.sampling_params import SamplingParams

NEG_INF = float("-inf")


def right(logits, top_p):
    """The notebook's solution: the cutoff is the probability of the last kept token."""
    probs = logits.softmax(-1)
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    mass_above = sorted_probs.cumsum(-1) - sorted_probs
    num_kept = (mass_above < top_p[:, None]).sum(-1)
    cutoff = sorted_probs.gather(1, (num_kept - 1)[:, None])
    return logits.masked_fill(probs < cutoff, NEG_INF)


def sort_based(logits, top_p, descending=True, inclusive=False, scatter=True, softmax=True,
               one_p=False, ties=False):
    """A sort-and-scatter top-p with the common bugs as switches."""
    x = logits.softmax(-1) if softmax else logits
    values, order = x.sort(dim=-1, descending=descending)
    mass = values.cumsum(-1) - (0 if inclusive else values)
    p = top_p[:1].expand(len(top_p)) if one_p else top_p
    keep_sorted = mass < p[:, None]
    if ties:  # keep ties with the last kept token: then this one is right
        last = values.gather(1, (keep_sorted.sum(-1) - 1).clamp(min=0)[:, None])
        keep_sorted = values >= last
    keep = keep_sorted.scatter(1, order, keep_sorted) if scatter else keep_sorted
    return logits.masked_fill(~keep, NEG_INF)


def test_right_answers_pass_and_none_is_not_answered(capsys):
    assert check_top_p_filter(right) is True
    assert check_top_p_filter(lambda logits, top_p: sort_based(logits, top_p, ties=True))
    out = capsys.readouterr().out
    assert out.count("Correct") == 2 and "same 48 tokens" in out
    assert check_top_p_filter(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert check_top_p_filter(lambda logits, top_p: None) is False  # the notebook's stub
    assert "Not answered yet" in capsys.readouterr().out
    assert TOP_P_LOGITS.softmax(-1).argmax() == 1  # the exercise vector is not sorted


@pytest.mark.parametrize("bug, hint", [
    (dict(descending=False), "largest first"),
    (dict(inclusive=True), "no token at all|one token too few"),
    (dict(scatter=False), "scatter it back"),
    (dict(softmax=False), "not over the logits"),
    (dict(one_p=True), r"top_p\[i\]"),
    (dict(), "TIED"),
])
def test_named_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_top_p_filter(lambda logits, top_p: sort_based(logits, top_p, **bug))


def test_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="logits changed|not probabilities"):
        check_top_p_filter(lambda logits, top_p: right(logits, top_p).softmax(-1))
    with pytest.raises(LabCheckFailed, match="not 0"):
        check_top_p_filter(lambda logits, top_p: right(logits, top_p).nan_to_num(neginf=0.0)
                           .masked_fill(~right(logits, top_p).isfinite(), 0.0))
    with pytest.raises(LabCheckFailed, match="shape"):
        check_top_p_filter(lambda logits, top_p: right(logits, top_p)[0])
    with pytest.raises(LabCheckFailed, match="in place"):
        check_top_p_filter(lambda logits, top_p: logits.masked_fill_(
            ~right(logits, top_p).isfinite(), NEG_INF))
    with pytest.raises(LabCheckFailed, match="not a function"):
        check_top_p_filter(0.9)


def test_wrong_answer_renders_as_one_short_line():
    with pytest.raises(LabCheckFailed) as info:
        check_top_p_filter(lambda logits, top_p: sort_based(logits, top_p, descending=False))
    lines = info.value._render_traceback_()
    assert len(lines) == 1 and "largest first" in lines[0] and "File" not in lines[0]
    assert isinstance(info.value, AssertionError)  # still fails a cell, pytest and nbmake


def test_sampler_top_p_seam():
    logits = TOP_P_LOGITS.expand(3, -1).contiguous()
    meta = SamplingMetadata([SamplingParams(temperature=1.0, top_p=0.5, seed=i) for i in range(3)],
                            [[]] * 3, [[]] * 3,
                            [torch.Generator().manual_seed(i) for i in range(3)], [set()] * 3)
    seen = []

    def spy(x, top_p):
        seen.append(top_p.tolist())
        return apply_top_p(x, top_p)

    assert Sampler(top_p_fn=spy)(logits, meta).token_ids is not None
    assert seen == [[0.5, 0.5, 0.5]]
    assert Sampler().top_p_fn is apply_top_p
