"""M2: the batching arithmetic and drivers in folo_edu.viz.batching, and the checks in
folo_edu.labs.m2_batching.

The key test runs the real scheduler with a fake model on lengths alone
(simulate_continuous, no tensors) and asserts it predicts the real engine's schedule,
step for step.
"""
from __future__ import annotations

import random

import pytest

from folo_edu import SamplingParams
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.labs.m2_batching import (EXERCISE_BATCH_SIZE, EXERCISE_OUTPUT_LENS,
                                       check_continuous_steps, check_static_steps)
from folo_edu.viz import batching as vb


@pytest.fixture(scope="module")
def model_path(tiny_model_dir):
    return str(tiny_model_dir("llama-gqa2-tied"))


def _engine(path, max_num_seqs, **kw):
    return LLMEngine.from_kwargs(path, skip_tokenizer_init=True, max_model_len=128,
                                 num_kv_blocks=256, block_size=4, max_num_seqs=max_num_seqs,
                                 **kw)


def _greedy(n):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def _random_case(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 10)
    prompts = [rng.randint(1, 40) for _ in range(n)]
    outputs = [rng.randint(1, 10) for _ in range(n)]
    arrivals = [rng.randint(0, 8) for _ in range(n)]
    return prompts, outputs, arrivals, rng.randint(1, 5)


# ---- the simulator predicts the real scheduler ------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_simulated_schedule_equals_real_engine(model_path, seed):
    prompts, outputs, arrivals, seats = _random_case(seed)
    budget = 128 if seed % 2 else None  # odd seeds: a budget that binds for long prompts
    kw = {} if budget is None else {"max_num_batched_tokens": budget}
    reqs = vb.random_requests(prompts, outputs, vocab_size=256, seed=seed)
    timeline = vb.record_timeline(
        _engine(model_path, seats, **kw),
        [(a, f"r{i}", {"prompt_token_ids": ids}, _greedy(n))
         for i, (a, (ids, n)) in enumerate(zip(arrivals, reqs))])
    sim = vb.simulate_continuous(prompts, outputs, seats, budget, arrival_steps=arrivals)
    assert timeline.steps == sim.steps
    assert timeline.finish_step == sim.finish_step
    assert timeline.arrival_step == sim.arrival_step
    assert {r: len(t) for r, t in timeline.token_ids.items()} == {
        f"r{i}": n for i, n in enumerate(outputs)}
    assert len(timeline.stats) == len(timeline.step_seconds) == timeline.num_steps
    assert [s["num_batched_tokens_last_step"] for s in timeline.stats] == \
        timeline.tokens_per_step()
    assert timeline.stats[-1]["num_running"] == timeline.stats[-1]["kv_blocks_used"] == 0


def test_budget_that_binds_delays_a_prefill(model_path):
    # 4 seats but 40 tokens a step: the second 30-token prompt waits for the next step.
    sim = vb.simulate_continuous([30, 30, 5], [3, 3, 3], max_num_seqs=4,
                                 max_num_batched_tokens=40)
    assert sim.steps[0] == [("r0", 30, "prefill")]
    assert sim.steps[1] == [("r0", 1, "decode"), ("r1", 30, "prefill"), ("r2", 5, "prefill")]
    with pytest.raises(ValueError, match="never fits"):
        vb.simulate_continuous([50], [1], 4, max_num_batched_tokens=40)
    with pytest.raises(ValueError, match="max_num_seqs=4"):
        vb.simulate_continuous([1], [1], 4, max_num_batched_tokens=2)


@pytest.mark.parametrize("seed", range(20))
def test_simulated_schedule_invariants(seed):
    prompts, outputs, arrivals, seats = _random_case(seed)
    sim = vb.simulate_continuous(prompts, outputs, seats, arrival_steps=arrivals)
    admitted = {}
    for s, step in enumerate(sim.steps):
        assert len(step) <= seats
        for rid, n, kind in step:
            i = int(rid[1:])
            assert s >= arrivals[i]
            if kind == "prefill":
                assert n == prompts[i]
                admitted[i] = s
            else:
                assert n == 1
    # first come, first served: nobody is admitted before an earlier arrival
    fcfs = sorted(range(len(prompts)), key=lambda i: (arrivals[i], i))
    assert [admitted[i] for i in fcfs] == sorted(admitted.values())
    for i, n in enumerate(outputs):  # one prefill, then n - 1 decodes, back to back
        mine = [(s, kind) for s, step in enumerate(sim.steps) for r, _, kind in step
                if r == f"r{i}"]
        assert [k for _, k in mine] == ["prefill"] + ["decode"] * (n - 1)
        assert [s for s, _ in mine] == list(range(mine[0][0], mine[0][0] + n))
        assert sim.finish_step[f"r{i}"] == mine[-1][0]


# ---- static against continuous arithmetic ----------------------------------------------
def test_step_counts_of_the_exercise():
    assert vb.static_batching_steps([6, 2, 3, 7, 1, 4], 3) == 13
    assert vb.continuous_batching_steps([6, 2, 3, 7, 1, 4], 3) == 9
    assert vb.static_batching_steps([5, 1, 1], 1) == vb.continuous_batching_steps([5, 1, 1], 1) == 7
    # with enough seats for everyone both are the longest output
    assert vb.static_batching_steps([5, 1, 9], 8) == vb.continuous_batching_steps([5, 1, 9], 8) == 9


@pytest.mark.parametrize("seed", range(10))
def test_continuous_never_needs_more_steps_than_static(seed):
    prompts, outputs, _, seats = _random_case(seed)
    cont = vb.continuous_batching_steps(outputs, seats)
    assert -(-sum(outputs) // seats) <= cont <= vb.static_batching_steps(outputs, seats)


def test_static_slot_usage_by_hand():
    # batch 1: prompts 3, 5 -> width 5 (2 padding); outputs 4, 1 -> 4 steps (3 padding)
    # batch 2: prompt 2, output 2: no padding
    u = vb.static_slot_usage([3, 5, 2], [4, 1, 2], batch_size=2)
    assert u == {"prompt_tokens": 10, "prompt_padding": 2, "output_tokens": 7,
                 "output_padding": 3, "useful": 17, "computed": 22, "steps": 6}
    grid = vb.static_layout([3, 5, 2], [4, 1, 2], batch_size=2)
    assert grid.shape == (3, 9)
    assert grid[0].tolist() == [1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert grid[1].tolist() == [2, 2, 2, 2, 2, 3, 4, 4, 4]
    assert grid[2].tolist() == [2, 2, 3, 3, 0, 0, 0, 0, 0]
    for code, key in ((vb.PROMPT_PAD, "prompt_padding"), (vb.PROMPT, "prompt_tokens"),
                      (vb.OUTPUT, "output_tokens"), (vb.OUTPUT_PAD, "output_padding")):
        assert (grid == code).sum() == u[key]


@pytest.mark.parametrize("seed", range(5))
def test_simulated_static_agrees_with_the_counts(seed):
    prompts, outputs, _, b = _random_case(seed)
    sim = vb.simulate_static(prompts, outputs, b)
    u = vb.static_slot_usage(prompts, outputs, b)
    assert sim.num_steps == u["steps"] == vb.static_batching_steps(outputs, b)
    kinds = [k for step in sim.steps for _, _, k in step]
    assert kinds.count("padding") == u["output_padding"]
    assert kinds.count("decode") == sum(outputs) - len(outputs)
    assert all(len(step) <= b for step in sim.steps)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="one of each"):
        vb.static_slot_usage([1, 2], [1], 2)
    with pytest.raises(ValueError, match="at least 1 token"):
        vb.simulate_continuous([0], [1], 1)
    with pytest.raises(ValueError, match="expected an int >= 1"):
        vb.static_batching_steps([1], 0)
    with pytest.raises(ValueError, match="one of each"):
        vb.random_requests([1], [], 10)


# ---- drivers of the real engine ---------------------------------------------------------
def test_static_and_continuous_runs_match_the_arithmetic(model_path):
    rng = random.Random(3)
    prompts = [rng.randint(2, 20) for _ in range(9)]
    outputs = [rng.randint(1, 9) for _ in range(9)]
    reqs = vb.random_requests(prompts, outputs, vocab_size=256, seed=3)
    static = vb.run_static(_engine(model_path, 4), reqs, batch_size=4)
    cont = vb.run_continuous(_engine(model_path, 4), reqs)
    assert static["steps"] == vb.static_batching_steps(outputs, 4)
    assert cont["steps"] == vb.continuous_batching_steps(outputs, 4)
    for run in (static, cont):
        assert [len(t) for t in run["token_ids"]] == outputs
        assert run["output_tokens"] == sum(outputs) and run["tok_s"] > 0
    assert len(cont["step_seconds"]) == len(cont["step_tokens"]) == cont["steps"]
    assert cont["step_decode_only"][0] is False


def test_measure_throughput_fields(model_path):
    reqs = vb.random_requests([4] * 4, [3] * 4, vocab_size=256)
    res = vb.measure_throughput(lambda b: _engine(model_path, b), reqs, [1, 4], repeats=2)
    assert [r["max_num_seqs"] for r in res] == [1, 4]
    assert [r["steps"] for r in res] == [12, 3]
    assert all(r["output_tokens"] == 12 and r["tok_s"] > 0 for r in res)
    assert res[0]["full_decode_ms"] > 0 and res[1]["full_decode_ms"] > 0


# ---- figures and the widget ------------------------------------------------------------
def test_plots_draw(model_path):
    from matplotlib.figure import Figure

    prompts, outputs, arrivals, seats = _random_case(0)
    reqs = vb.random_requests(prompts, outputs, vocab_size=256)
    timeline = vb.record_timeline(
        _engine(model_path, seats),
        [(a, f"r{i}", {"prompt_token_ids": ids}, _greedy(n))
         for i, (a, (ids, n)) in enumerate(zip(arrivals, reqs))])
    fig = vb.plot_timeline(timeline)
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["prefill", "decode"]
    assert len(fig.axes[0].get_yticklabels()) == len(prompts)
    assert len(vb.plot_stats(timeline, max_num_seqs=seats).axes) == 3  # one twin axis
    fig = vb.plot_static_vs_continuous(prompts, outputs, 2)
    assert "padding" in fig.axes[0].get_title() and "no padding" in fig.axes[1].get_title()
    assert "%" in vb.plot_static_padding(prompts, outputs, 2).axes[0].get_title()
    results = [{"max_num_seqs": 1, "tok_s": 10.0, "ms_per_step": 5.0, "full_decode_ms": 4.0},
               {"max_num_seqs": 4, "tok_s": 30.0, "ms_per_step": 7.0, "full_decode_ms": None}]
    assert len(vb.plot_throughput(results).axes) == 2
    bars = vb.plot_static_vs_continuous_measured({"tok_s": 1.0, "steps": 9},
                                                 {"tok_s": 2.0, "steps": 5})
    assert len(bars.axes[0].patches) == 2
    with pytest.raises(ValueError, match="no stats"):
        vb.plot_stats(vb.simulate_static([1], [1], 1))


def test_explorer_is_a_slider_over_the_static_figure():
    import ipywidgets as widgets

    box = vb.batching_explorer([3, 5, 2], [4, 1, 2])
    slider, out = box.children
    assert isinstance(slider, widgets.IntSlider) and slider.max == 3
    assert isinstance(out, widgets.Output)


# ---- the exercise checks ----------------------------------------------------------------
def test_checks_pass_the_right_answers(capsys):
    assert check_static_steps(13) is True
    assert check_continuous_steps(9) is True
    out = capsys.readouterr().out
    assert out.count("Correct") == 2 and "static batching: 13" in out
    assert (vb.static_batching_steps(EXERCISE_OUTPUT_LENS, EXERCISE_BATCH_SIZE),
            vb.continuous_batching_steps(EXERCISE_OUTPUT_LENS, EXERCISE_BATCH_SIZE)) == (13, 9)
    assert check_static_steps(5, output_lens=[5, 1, 2], batch_size=4)
    assert check_continuous_steps(4, output_lens=[2, 2, 2, 2], max_num_seqs=2)


def test_checks_say_not_answered(capsys):
    assert check_static_steps(None) is False
    assert check_continuous_steps(None) is False
    assert capsys.readouterr().out.count("Not answered yet") == 2


@pytest.mark.parametrize("check, answer, hint", [
    (check_static_steps, 23, "one request at a time"),
    (check_static_steps, 8, "perfect packing"),
    (check_static_steps, 7, "one batch holding every request"),
    (check_static_steps, 15, "prefill step already"),
    (check_static_steps, 12, "longest output in each batch"),
    (check_static_steps, "13", "not a number"),
    (check_continuous_steps, 13, "that is static batching"),
    (check_continuous_steps, 8, "perfect packing"),
    (check_continuous_steps, 15, "prefill is not a step of its own"),
    (check_continuous_steps, 10, "play it step by step"),
])
def test_checks_explain_wrong_answers(check, answer, hint):
    with pytest.raises(AssertionError, match=hint):
        check(answer)
