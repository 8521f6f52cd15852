"""M3: the KV memory measurement in folo_edu.bench.kv_memory, the block-table views in
folo_edu.viz.paged, and the exercise checks in folo_edu.labs.m3_paged.

The measurement drives the real Scheduler and KVCacheManager, so these tests pin its
numbers to cases worked out by hand, and the views to a real engine's state.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from folo_edu import SamplingParams
from folo_edu.bench import kv_memory as km
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.kv_cache.slots import slot_of
from folo_edu.labs.m3_paged import check_blocks_needed, check_requests_that_fit, check_slot
from folo_edu.viz import paged as vp


@pytest.fixture(scope="module")
def model_path(tiny_model_dir):
    return str(tiny_model_dir("llama-gqa2-tied"))


def _engine(path, num_kv_blocks, block_size=4, **kw):
    return LLMEngine.from_kwargs(path, skip_tokenizer_init=True, dtype="float32",
                                 max_model_len=128, num_kv_blocks=num_kv_blocks,
                                 block_size=block_size, **kw)


def _greedy(n):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def _arrivals(prompt_lens, output_lens, steps, seed=0):
    rng = random.Random(seed)
    return [(s, f"r{i}", {"prompt_token_ids": [rng.randrange(3, 256) for _ in range(p)]},
             _greedy(o)) for i, (p, o, s) in enumerate(zip(prompt_lens, output_lens, steps))]


# ---- kv_memory: lengths ----------------------------------------------------------------
def test_length_distribution_is_seeded_and_clipped():
    d = km.LengthDistribution(max_model_len=256)
    a, b = d.sample(500, seed=3), d.sample(500, seed=3)
    assert a == b and a != d.sample(500, seed=4)
    assert all(p >= 1 and o >= 1 and p + o <= 256 for p, o in a)
    assert "lognormal" in d.describe()
    stats = km.length_stats(a)
    assert stats["n"] == 500 and stats["total"]["max"] <= 256
    with pytest.raises(ValueError, match="at least 1"):
        d.sample(0)


# ---- kv_memory: one run, by hand --------------------------------------------------------
def test_one_request_by_hand():
    # prompt 5, output 3, blocks of 4: the forward passes hold 5, 6, 7 tokens in 2 blocks
    paged = km.run_workload([(5, 3)], tokens_per_block=4, num_blocks=10, max_model_len=16)
    assert paged.used.tolist() == [5, 6, 7]
    assert paged.allocated.tolist() == [8, 8, 8]
    assert paged.waste_fraction == pytest.approx(1 - 18 / 24)
    assert paged.mean_step_waste == pytest.approx(np.mean([3 / 8, 2 / 8, 1 / 8]))
    # contiguous: one 16-token block per request
    contiguous = km.run_workload([(5, 3)], tokens_per_block=16, num_blocks=2, max_model_len=16)
    assert contiguous.allocated.tolist() == [16, 16, 16]
    assert contiguous.waste_fraction == pytest.approx(1 - 18 / 48)
    assert paged.ideal_tokens == paged.scheduled_tokens == 5 + 2
    assert paged.num_preemptions == 0 and paged.recompute_overhead == 0


def test_contiguous_concurrency_is_the_number_of_slabs():
    lengths = km.LengthDistribution(max_model_len=256).sample(60, seed=1)
    run = km.run_workload(lengths, tokens_per_block=256, num_blocks=5, max_model_len=256)
    assert run.peak_running == 5 and run.mean_running_while_queued == pytest.approx(5)
    assert run.num_preemptions == 0
    a = km.analytic_concurrency(lengths, 256, 5 * 256)
    assert a["at_final_length"] == a["time_average"] == 5


@pytest.mark.parametrize("seed", range(3))
def test_paged_wastes_less_and_fits_more(seed):
    lengths = km.LengthDistribution(prompt_median=32, output_median=40,
                                    max_model_len=256).sample(120, seed=seed)
    rows = km.measure(lengths, max_model_len=256, budget_slots=4 * 256, block_sizes=(4, 16))
    contiguous, p4, p16 = rows
    assert [r["label"] for r in rows] == ["contiguous", "paged, block 4", "paged, block 16"]
    for r in rows:
        assert 0 <= r["waste_fraction"] < 1
        assert r["budget_slots"] == 4 * 256
    # the waste of a paged cache is the unfilled end of the last block: < 1 block/request
    assert p4["waste_fraction"] < p16["waste_fraction"] < contiguous["waste_fraction"]
    assert p16["mean_running_while_queued"] > 2 * contiguous["mean_running_while_queued"]
    assert contiguous["peak_running"] == 4


def test_used_never_exceeds_allocated_and_preemption_recomputes():
    lengths = [(30, 30)] * 6
    run = km.run_workload(lengths, tokens_per_block=4, num_blocks=16, max_model_len=64)
    assert (run.used <= run.allocated).all() and (run.allocated <= 64).all()
    assert run.num_preemptions > 0 and run.scheduled_tokens > run.ideal_tokens
    assert run.recompute_overhead > 0


def test_analytic_concurrency_by_hand():
    # prompt 3, output 3, blocks of 2: holds 3, 4, 5 tokens -> 4, 4, 6 slots; final 6 tokens
    a = km.analytic_concurrency([(3, 3)], tokens_per_block=2, budget_slots=28)
    assert a["mean_slots_over_life"] == pytest.approx(14 / 3)
    assert a["time_average"] == pytest.approx(28 / (14 / 3))
    assert a["mean_slots_at_final_length"] == 6 and a["at_final_length"] == pytest.approx(28 / 6)


def test_refuses_what_can_never_fit():
    with pytest.raises(ValueError, match="needs 3 blocks"):
        km.run_workload([(9, 1)], tokens_per_block=4, num_blocks=2, max_model_len=64)
    with pytest.raises(ValueError, match="max_model_len=8"):
        km.run_workload([(6, 3)], tokens_per_block=4, num_blocks=8, max_model_len=8)
    with pytest.raises(ValueError, match="not a multiple"):
        km.measure([(3, 3)], max_model_len=64, budget_slots=100, block_sizes=(16,))


# ---- viz.paged: a real engine ------------------------------------------------------------
def test_snapshots_match_the_engine(model_path):
    engine = _engine(model_path, num_kv_blocks=32)
    snaps, tokens = vp.record_snapshots(
        engine, _arrivals([6, 13, 3, 9, 5], [8, 5, 12, 6, 9], [0, 0, 0, 1, 3]))
    assert snaps[0].step == 0 and not snaps[0].tables
    assert [s.step for s in snaps] == list(range(len(snaps)))
    assert {r: len(t) for r, t in tokens.items()} == {"r0": 8, "r1": 5, "r2": 12, "r3": 6,
                                                      "r4": 9}
    assert not snaps[-1].tables and snaps[-1].stats["kv_blocks_used"] == 0
    for s in snaps:
        owners, fill = vp.physical_view(s)
        held = [b for t in s.tables.values() for b in t]
        assert len(held) == s.num_used_blocks == s.stats["kv_blocks_used"]
        assert sorted(held + s.free_blocks) == list(range(s.num_blocks))
        assert sum(owner is not None for owner in owners) == len(held)
        for rid, table in s.tables.items():
            assert len(table) == vp.blocks_needed(s.cached_tokens[rid], s.block_size)
            assert fill[table].sum() == s.cached_tokens[rid]
        assert set(s.running) == set(s.tables)
    # step 1 prefilled the three first prompts: 6, 13, 3 tokens -> 2, 4, 1 blocks
    assert {r: len(t) for r, t in snaps[1].tables.items()} == {"r0": 2, "r1": 4, "r2": 1}
    ev = vp.block_events(snaps[0], snaps[1])
    assert ev["freed"] == {} and ev["allocated"] == snaps[1].tables


def test_block_events_report_frees():
    a = vp.KVSnapshot(3, 4, 8, {"x": [0, 1], "y": [2]}, {"x": 6, "y": 2}, ["x", "y"], [],
                      [3, 4, 5, 6, 7])
    b = vp.KVSnapshot(4, 4, 8, {"y": [2, 3]}, {"y": 5}, ["y"], [], [4, 5, 6, 7, 1, 0])
    assert vp.block_events(a, b) == {"allocated": {"y": [3]}, "freed": {"x": [0, 1]}}


@pytest.mark.parametrize("seed", range(5))
def test_slot_of_is_the_managers_slot_mapping(model_path, seed):
    engine = _engine(model_path, num_kv_blocks=40, block_size=3)
    rng = random.Random(seed)
    for i in range(4):
        engine.add_request(f"r{i}", {"prompt_token_ids": [5] * rng.randint(1, 20)},
                           _greedy(rng.randint(2, 9)))
    for _ in range(rng.randint(1, 6)):
        engine.step()
    kv = engine.kv_manager
    for req in engine.scheduler.running:
        n = req.num_computed_tokens
        table = kv.get_block_table(req.request_id)
        assert [slot_of(table, 3, p) for p in range(n)] == \
            kv.slot_mapping(req.request_id, 0, n)
    with pytest.raises(ValueError, match="position=8"):
        slot_of([1, 2], 4, 8)


def test_contiguous_engine_has_one_block_per_request(model_path):
    engine = _engine(model_path, num_kv_blocks=2, kv_cache="contiguous")
    snaps, _ = vp.record_snapshots(engine, _arrivals([5, 7, 3], [4, 4, 4], [0, 0, 0]))
    assert snaps[1].block_size == 128
    assert all(len(t) == 1 for s in snaps for t in s.tables.values())
    assert snaps[1].waiting == ["r2"] and len(snaps[1].running) == 2


def test_plots_draw(model_path):
    from matplotlib.figure import Figure

    engine = _engine(model_path, num_kv_blocks=20)
    prompts = [[(5 * i + j) % 250 + 3 for j in range(20)] for i in range(3)]
    snaps, _ = vp.record_snapshots(engine, [(0, f"q{i}", {"prompt_token_ids": p}, _greedy(30))
                                            for i, p in enumerate(prompts)])
    assert snaps[-1].stats["num_preemptions"] > 0
    fig = vp.plot_block_tables(snaps[3])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "physical pool" in fig.axes[1].get_title()
    assert len(vp.plot_snapshot_stats(snaps).axes) == 2
    lengths = km.LengthDistribution(max_model_len=128).sample(30, seed=0)
    rows = km.measure(lengths, 128, 4 * 128, block_sizes=(16,))
    assert len(vp.plot_waste(rows).axes[0].patches) >= 2
    assert len(vp.plot_concurrency(rows).axes[0].patches) == 6
    runs = [km.run_workload(lengths, 128, 4, 128, label="c"),
            km.run_workload(lengths, 16, 32, 128, label="p")]
    assert len(vp.plot_kv_usage(runs).axes[0].lines) == 5


def test_explorer_is_a_slider_over_the_static_figure(model_path):
    import ipywidgets as widgets

    engine = _engine(model_path, num_kv_blocks=16)
    snaps, _ = vp.record_snapshots(engine, _arrivals([4, 6], [3, 3], [0, 1]))
    box = vp.block_table_explorer(snaps)
    slider, out = box.children
    assert isinstance(slider, widgets.IntSlider) and slider.max == len(snaps) - 1
    assert isinstance(out, widgets.Output)


# ---- labs ----------------------------------------------------------------------------------
def test_checks_pass_the_right_answers(capsys):
    assert check_blocks_needed(4) and check_slot(75) and check_requests_that_fit(9)
    assert capsys.readouterr().out.count("Correct") == 3
    assert check_blocks_needed(1, num_tokens=16, block_size=16)
    assert check_slot(5, block_table=[1], block_size=4, position=1)
    assert check_requests_that_fit(10, pool_blocks=20, block_size=4, tokens_per_request=8)


def test_checks_say_not_answered(capsys):
    assert not check_blocks_needed(None)
    assert not check_slot(None)
    assert not check_requests_that_fit(None)
    assert capsys.readouterr().out.count("Not answered yet") == 3


@pytest.mark.parametrize("check, answer, hint", [
    (check_blocks_needed, 3, "rounded down"),
    (check_blocks_needed, 57 / 16, "round up to a whole number"),
    (check_blocks_needed, 5, "one block too many"),
    (check_blocks_needed, 57, "tokens, not blocks"),
    (check_blocks_needed, 9, "divide the tokens"),
    (check_blocks_needed, "4", "not a number"),
    (check_slot, 19, "logical position"),
    (check_slot, 9, "physical block id"),
    (check_slot, 72, "first slot"),
    (check_slot, 3, "only the offset"),
    (check_slot, 11, "off by one block"),
    (check_slot, 35, "off by one block"),
    (check_slot, 74, "slot = block_table"),
    (check_requests_that_fit, 10, "shared blocks"),
    (check_requests_that_fit, 64 / 7, "round down"),
    (check_requests_that_fit, 8, "divide the pool"),
])
def test_checks_explain_wrong_answers(check, answer, hint):
    with pytest.raises(AssertionError, match=hint):
        check(answer)
