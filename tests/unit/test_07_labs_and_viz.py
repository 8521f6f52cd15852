"""Notebook 07 (chunked prefill): the chunk-rule lab accepts the reference, names each
common bug, says "not answered" for the stub; the latency driver and the viz functions
return sane data on a tiny model."""
from __future__ import annotations

import pytest

from folo_edu.engine.scheduler import tokens_this_step
from folo_edu.labs import LabCheckFailed
from folo_edu.labs import m5_chunked as lab


def test_reference_passes_and_stub_is_not_answered(capsys):
    assert lab.check_tokens_this_step(tokens_this_step) is True
    out = capsys.readouterr().out
    assert "Correct" in out and "transformers" in out
    assert lab.check_tokens_this_step(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    assert lab.check_tokens_this_step(lambda remaining, budget, threshold, chunked: None) is False
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lab._ignores_threshold, "threshold is ignored"),
    (lab._returns_budget, "returns the budget"),
    (lab._always_chunks, "chunks when chunked is False"),
    (lab._never_chunks, "returns 0 when the budget left is smaller"),
    (lab._strict_fit, "off by one"),
    (lab._budget_minus_one, "off by one"),
    (lab._threshold_zero_caps, "threshold 0 means no cap"),
])
def test_named_bugs_get_their_hint(wrong, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        lab.check_tokens_this_step(wrong)


def test_other_wrong_answers():
    with pytest.raises(LabCheckFailed, match="more than the request has remaining"):
        lab.check_tokens_this_step(lambda r, b, t, c: min(r + 1, b))
    with pytest.raises(LabCheckFailed, match="at least one token"):
        lab.check_tokens_this_step(lambda r, b, t, c: 0)
    with pytest.raises(LabCheckFailed, match="expected an int"):
        lab.check_tokens_this_step(lambda r, b, t, c: float(tokens_this_step(r, b, t, c)))
    with pytest.raises(LabCheckFailed, match="returned None"):
        lab.check_tokens_this_step(lambda r, b, t, c: tokens_this_step(r, b, t, c) if c else None)
    with pytest.raises(LabCheckFailed, match="raised ZeroDivisionError"):
        lab.check_tokens_this_step(lambda r, b, t, c: r // 0)
    with pytest.raises(LabCheckFailed, match="not a function"):
        lab.check_tokens_this_step(42)


def test_edge_cases_cover_every_named_bug():
    for wrong, _ in lab.WRONG_RULES:
        assert any(wrong(*c) != tokens_this_step(*c) for c in lab.EDGE_CASES), wrong.__name__


def test_engine_guard_reports_a_bad_value_at_the_call():
    guard = lab._Guarded(lambda r, b, t, c: b + 1)
    with pytest.raises(LabCheckFailed, match=r"inside the engine.*\[0, min\(remaining, budget\)\]"):
        guard(5, 3, 0, True)
    assert lab._skipped_decode([[("a", 1, "decode")], []], {"a": 5}) == 1
    assert lab._skipped_decode([[("a", 1, "decode")], []], {"a": 0}) is None


# ---- the latency driver and the figures, on a tiny model -------------------------------
@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from folo_edu.engine.llm_engine import LLMEngine

    model = tiny_model_dir("llama-gqa2-tied", max_position_embeddings=512)
    return LLMEngine.from_kwargs(str(model), skip_tokenizer_init=True, max_model_len=256,
                                 num_kv_blocks=128, max_num_seqs=4, enable_prefix_caching=False)


def _runs(engine):
    from folo_edu.bench import latency

    running, long = latency.latency_workload(256, {0, 1, 2}, num_running=3,
                                             running_prompt_len=5, running_output_len=12,
                                             long_prompt_len=100, long_output_len=2)
    runs = {}
    for s in [latency.Setting("unchunked", False, 256), latency.Setting("c16", True, 16),
              latency.Setting("c64", True, 64)]:
        latency.set_scheduler(engine, s)
        runs[s.name] = latency.run_arrival(engine, running, long, arrival_step=2)
    return runs


def test_run_arrival_and_summaries(engine):
    from folo_edu.bench import latency

    runs = _runs(engine)
    un, c16 = runs["unchunked"], runs["c16"]
    assert un["long_chunks"] == [100] and un["long_prefill_steps"] == [2, 2]
    assert c16["long_chunks"] == [13] * 7 + [9]  # 16 - 3 decodes per step
    assert all(t <= 16 for t in c16["step_tokens"])
    assert un["token_ids"] == c16["token_ids"] == runs["c64"]["token_ids"]
    for run in runs.values():
        assert [len(x) for x in run["itls"]] == [11, 11, 11]
        assert all(x > 0 for row in run["itls"] for x in row)
        s = latency.summarize_run(run)
        assert s["itl_p50_s"] <= s["itl_p99_s"] <= s["itl_max_s"]
        assert s["long_ttft_s"] > 0 and s["num_itls"] == 33
    assert latency.summarize_run(c16)["num_itls_during_long_prefill"] == 3 * 8
    with pytest.raises(ValueError, match="max_model_len"):
        latency.set_scheduler(engine, latency.Setting("bad", False, 64))


def test_viz_functions(engine):
    from folo_edu.viz import batching as vb
    from folo_edu.viz import chunked as vc

    runs = _runs(engine)
    t, itl = vc.itl_points(runs["c16"])
    assert len(t) == len(itl) == 33 and (t[:-1] <= t[1:]).all() and (itl > 0).all()
    rows = vc.budget_rows({16: runs["c16"], 64: runs["c64"]}, runs["unchunked"])
    assert [r["budget"] for r in rows] == [16, 64, None]
    assert [r["chunks"] for r in rows] == [8, 2, 1]
    assert all(r["itl_p50_ms"] <= r["itl_p99_ms"] <= r["itl_max_ms"] for r in rows)
    fig = vc.plot_itl_around_arrival({"unchunked": runs["unchunked"], "chunked": runs["c16"]})
    assert len(fig.axes[0].lines) >= 2
    assert len(vc.plot_budget_tradeoff(rows).axes) == 2

    from folo_edu.bench import latency
    from folo_edu.sampling_params import SamplingParams

    latency.set_scheduler(engine, latency.Setting("c16", True, 16))
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    tl = vb.record_timeline(engine, [(0, "a", {"prompt_token_ids": [5, 6]}, params),
                                     (1, "b", {"prompt_token_ids": list(range(3, 43))}, params)])
    assert vc.chunk_sizes(tl, "b") == [15, 15, 10]
    decode, prefill = vc.step_token_split(tl)
    assert [d + p for d, p in zip(decode, prefill)] == tl.tokens_per_step()
    fig = vc.plot_chunk_timelines({"chunked": tl}, {"chunked": 16})
    assert len(fig.axes) == 2


def test_result_rows():
    from folo_edu.viz.chunked import result_rows

    med = [{"threads": 1, "max_num_batched_tokens": b, "enable_chunked_prefill": c,
            "itl_p50_s": 0.1, "itl_p99_s": 0.2, "itl_max_s": 0.3, "long_ttft_s": 1.0,
            "long_prefill_steps": 1} for b, c in [(2048, False), (512, True), (64, True)]]
    rows = result_rows({"medians": med + [dict(med[0], threads=2)]})
    assert [r["budget"] for r in rows] == [64, 512, None]
    assert rows[0]["itl_p99_ms"] == pytest.approx(200)
