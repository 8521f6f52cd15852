"""The notebook 06 lab: check_paged_decode accepts a right tiled paged decode (inside a real
engine whose greedy tokens equal transformers'), names each common bug, says "not
answered" for None and for the stub; and the graph speed-up check no longer takes 5.0."""
from __future__ import annotations

import pytest
import torch

from folo_edu.attention.paged_torch import paged_decode_torch
from folo_edu.labs import LabCheckFailed
from folo_edu.labs.m4_backends import check_graph_speedup, check_paged_decode, time_paged_decode


def paged(q, k_cache, v_cache, block_tables, seq_lens, scale, tile, rescale="both",
          scale_by=1.0, expand="interleave", mask=True, block="ok", divide=True):
    """A tiled decode with an online softmax, with the common bugs as switches."""
    B, H, D = q.shape
    bs, kvh = k_cache.shape[1], k_cache.shape[2]
    keys, values = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.empty_like(q)
    for b in range(B):
        n = int(seq_lens[b])
        end = n if mask else min(-(-n // tile) * tile, block_tables.shape[1] * bs)
        m = torch.full((H,), float("-inf"), dtype=q.dtype)
        l, acc = torch.zeros(H, dtype=q.dtype), torch.zeros(H, D, dtype=q.dtype)
        for t0 in range(0, end, tile):
            pos = torch.arange(t0, min(t0 + tile, end))
            table = block_tables[b]
            if block == "ok":
                slots = table[pos // bs] * bs + pos % bs
            elif block == "no_mul":
                slots = table[pos // bs] + pos % bs
            else:  # "swapped"
                slots = table[(pos % bs).clamp(max=len(table) - 1)] * bs + pos // bs
            k, v = keys[slots], values[slots]
            if expand == "interleave":
                k, v = k.repeat_interleave(H // kvh, 1), v.repeat_interleave(H // kvh, 1)
            else:
                k, v = k.repeat(1, H // kvh, 1), v.repeat(1, H // kvh, 1)
            s = torch.einsum("hd,thd->ht", q[b], k) * scale * scale_by
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[:, None])
            l = (l * alpha if rescale in ("both", "sum") else l) + p.sum(-1)
            acc = ((acc * alpha[:, None] if rescale in ("both", "acc") else acc)
                   + torch.einsum("ht,thd->hd", p, v))
            m = m_new
        out[b] = acc / l[:, None] if divide else acc
    return out


def test_right_answer_passes_in_the_engine_and_none_is_not_answered(capsys):
    assert check_paged_decode(paged) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "greedy tokens as transformers" in out
    assert check_paged_decode(lambda *a: paged_decode_torch(*a)) is True  # the package's
    capsys.readouterr()
    assert check_paged_decode(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert check_paged_decode(lambda *args: None) is False  # the stub
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    (dict(rescale="none"), "rescale what you summed so far"),
    (dict(rescale="sum"), "accumulator must be rescaled"),
    (dict(rescale="acc"), "running sum must be rescaled"),
    (dict(divide=False), "acc / l"),
    (dict(scale_by=0.5 ** 0.5 / 2), "not twice"),
])
def test_online_softmax_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_paged_decode(lambda *a: paged(*a, **bug))


@pytest.mark.parametrize("bug, hint", [
    (dict(expand="repeat"), "repeat_interleave"),
    (dict(mask=False), "past seq_len"),
    (dict(block="no_mul"), "left\\s+out \\* block_size"),
    (dict(block="swapped"), "swapped"),
])
def test_paging_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        check_paged_decode(lambda *a: paged(*a, **bug))


def test_missing_scale_and_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="1/sqrt"):
        check_paged_decode(lambda q, kc, vc, bt, sl, scale, tile: paged(q, kc, vc, bt, sl, 1.0, tile))
    with pytest.raises(LabCheckFailed, match="shaped like q"):
        check_paged_decode(lambda q, *a: q[:, 0])
    with pytest.raises(LabCheckFailed, match="changed the cache"):
        def zeroes_cache(q, kc, vc, *a):
            out = paged(q, kc, vc, *a)
            kc.zero_()
            return out
        check_paged_decode(zeroes_cache)
    with pytest.raises(LabCheckFailed, match="raised ValueError: boom"):
        def raises(*a):
            raise ValueError("boom")
        check_paged_decode(raises)


def test_time_paged_decode_times_each_function():
    result = time_paged_decode({"yours": paged, "package": paged_decode_torch},
                               contexts=(16, 40), batch=2, repeats=1)
    assert result["context"] == [16, 40]
    assert len(result["yours"]) == len(result["package"]) == 2
    assert all(t > 0 for t in result["yours"])


def test_graph_speedup_refuses_eager_over_work():
    with pytest.raises(LabCheckFailed, match="the replay is a launch too"):
        check_graph_speedup(5.0)
    assert check_graph_speedup(4.97)
