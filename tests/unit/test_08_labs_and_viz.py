"""Notebook 08 (prefix caching): the lookup lab accepts the reference, names each common
bug, says "not answered" for None and the stub, and its seam restores the engine; the
benchmark helpers (replay hit rate, the manager swap, one TTFT) and the viz functions
return sane data on a tiny model."""
from __future__ import annotations

import pytest

from folo_edu.bench import prefix as bp
from folo_edu.labs import LabCheckFailed
from folo_edu.labs import m6_prefix as lab
from folo_edu.labs.m1_sampling import tiny_lab_model
from folo_edu.viz import prefix as vpx


def lookup_with(bug=None):
    """A longest_cached_prefix with one of the common bugs switched on."""
    def fn(token_ids, block_size, lookup):
        n = len(token_ids)
        count = {"all_tokens": n // block_size, "partial_block": -(-n // block_size)}.get(
            bug, (n - 1) // block_size)
        hit = []
        for i in range(count):
            lo, hi = i * block_size, (i + 1) * block_size
            if bug == "slice":
                lo, hi = lo + 1, hi + 1
            parent = None if bug == "no_chain" else (hit[-1] if hit else None)
            block = lookup(i, parent, token_ids[lo:hi])
            if block is None:
                if bug == "no_stop":
                    continue
                break
            hit.append(block)
        return hit
    return fn


def test_reference_passes_and_none_or_stub_is_not_answered(capsys):
    assert lab.check_longest_cached_prefix(lab.reference_longest_cached_prefix) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "equal the reference engine's" in out
    assert lab.check_longest_cached_prefix(lookup_with()) is True
    capsys.readouterr()
    assert lab.check_longest_cached_prefix(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert lab.check_longest_cached_prefix(lambda token_ids, block_size, lookup: None) is False
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    ("all_tokens", "at most num_tokens - 1 tokens"),
    ("partial_block", "only full blocks"),
    ("slice", "off by one in the slice"),
    ("no_chain", "must follow the chain"),
    ("no_stop", "after a miss"),
])
def test_named_bugs_get_their_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        lab.check_longest_cached_prefix(lookup_with(bug))


def test_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="raised ZeroDivisionError"):
        lab.check_longest_cached_prefix(lambda t, b, lookup: 1 // 0)
    with pytest.raises(LabCheckFailed, match="return a list of block ids"):
        lab.check_longest_cached_prefix(lambda t, b, lookup: {1, 2})
    with pytest.raises(LabCheckFailed, match="not a function"):
        lab.check_longest_cached_prefix(7)


def test_the_seam_checks_in_the_engine_and_restores_it():
    engine = lab.lab_engine(tiny_lab_model())
    kv = engine.kv_manager
    lab.run_prefix_workload(engine)  # fills the cache; the lab copy starts from it
    with pytest.raises(LabCheckFailed, match="at most num_tokens - 1"):
        with lab.prefix_lookup_in_engine(engine, lookup_with("all_tokens")):
            engine.add_request("x", {"prompt_token_ids": lab.LAB_ARRIVALS[2][2]},
                               __import__("folo_edu").SamplingParams(max_tokens=2))
            engine.step()
    assert engine.kv_manager is kv and engine.scheduler.kv is kv


def test_measure_hits_sees_evictions_in_a_small_cache():
    rows = lab.measure_hits(tiny_lab_model(), lab.reference_longest_cached_prefix,
                            num_kv_blocks=(12, 40))
    small, big = rows
    assert big["evictions"] == 0 and small["evictions"] > 0
    # (not monotone: in a small cache a preempted request can hit its own blocks again)
    assert big["cached_tokens"] > 0 and small["cached_tokens"] > 0


def test_replay_hit_rate():
    one = bp.replay_hit_rate(64, num_requests=4, question_len=16, output_len=2,
                             arrival="one_by_one")
    assert one["hit_rate"] == pytest.approx(one["ideal_hit_rate"]) == 3 * 64 / (4 * 80)
    together = bp.replay_hit_rate(64, num_requests=4, question_len=16, output_len=2)
    # All admitted in the first step: the later ones share the blocks the first one fills
    # in that same step (cached at allocation, as vLLM does).
    assert together["hit_rate"] == pytest.approx(one["ideal_hit_rate"])
    assert bp.replay_hit_rate(0, 4, 16, 2, arrival="one_by_one")["hit_rate"] == 0
    with pytest.raises(ValueError, match="arrival"):
        bp.replay_hit_rate(16, arrival="sometimes")


def test_set_prefix_caching_and_ttft_once():
    engine = lab.lab_engine(tiny_lab_model(), dtype="float32")
    prompt = list(range(3, 23))
    assert bp.ttft_once(engine, prompt)["num_cached_tokens"] == 0
    again = bp.ttft_once(engine, prompt)
    assert again["num_cached_tokens"] == 16 and again["ttft_s"] > 0  # 19 tokens -> 4 blocks
    bp.set_prefix_caching(engine, False)
    assert engine.scheduler.kv is engine.kv_manager
    assert bp.ttft_once(engine, prompt)["num_cached_tokens"] == 0
    assert engine.config.cache_config.enable_prefix_caching is False
    bp.set_prefix_caching(engine, True)
    assert bp.ttft_once(engine, prompt)["num_cached_tokens"] == 0  # a fresh, empty cache


def test_viz_reads_a_real_engine_and_draws():
    engine = lab.lab_engine(tiny_lab_model(), dtype="float32")
    sp = __import__("folo_edu").SamplingParams(max_tokens=4, ignore_eos=True, temperature=0)
    engine.add_request("a", {"prompt_token_ids": lab.SYSTEM + [200, 201]}, sp)
    engine.step()
    engine.add_request("b", {"prompt_token_ids": lab.SYSTEM + [210]}, sp)
    engine.step()
    snap = vpx.snapshot(engine)
    a, b = snap.tables["a"], snap.tables["b"]
    assert a[:2] == b[:2] and all(snap.ref_counts[x] == 2 for x in a[:2])
    rows = vpx.hash_chain_rows(lab.SYSTEM + [210], 4, engine.kv_manager.pool)
    assert [r["physical_block"] for r in rows] == a[:2] and rows[1]["ref_count"] == 2
    assert rows[1]["parent_hash"] == rows[0]["hash"]
    assert "physical_block" in vpx.format_rows(rows)
    assert vpx.plot_shared_blocks(snap) is not None
    assert vpx.plot_free_queue([("now", snap)]) is not None
    assert vpx.plot_ttft_vs_prefix([{"prefix_len": 64, "cold_s": 0.2, "warm_s": 0.05}])
    assert vpx.plot_hit_rate({"x": [(0, 0.0), (64, 0.5)]}) is not None
    assert vpx.plot_cache_sizes([{"num_kv_blocks": 12, "hit_rate": 0.3, "evictions": 4}])
