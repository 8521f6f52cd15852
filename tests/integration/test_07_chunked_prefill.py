"""M5 chunked prefill: the same tokens whatever the budget, and no decode ever waits.

Tiny float64 models, so greedy tokens must equal transformers' exactly. The reference
for everything else (seeded sampling, prompt logprobs) is the same engine with a budget
big enough that nothing is chunked or preempted.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_runs import run_with_arrivals

from folo_edu import SamplingParams
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.engine.scheduler import tokens_this_step
from folo_edu.request import RequestStatus

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def model_path(tiny_model_dir):
    return str(tiny_model_dir("qwen2-bias-gqa4"))


def _prompts(n=5, seed=3, lo=1, hi=40):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (int(torch.randint(lo, hi, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def _engine(path, **kw):
    kw = {"dtype": "float64", "skip_tokenizer_init": True, "max_model_len": 128,
          "num_kv_blocks": 256, "block_size": 4, **kw}
    return LLMEngine.from_kwargs(path, **kw)


def _run(engine, prompts, params, watch_decodes=False):
    """Add every prompt, step to the end; {id: RequestOutput}. With watch_decodes, assert
    that every running decode was scheduled in every step (stall-free batching)."""
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    outs = {}
    while engine.has_unfinished_requests():
        sched = engine.scheduler
        decodes = {r.request_id for r in sched.running
                   if r.num_tokens - r.num_computed_tokens == 1}
        preempted_before = sched.num_preemptions
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out
        ran = {rid for rid, _, _ in engine.last_step}
        budget = engine.config.scheduler_config.max_num_batched_tokens
        assert sum(n for _, n, _ in engine.last_step) <= budget
        if watch_decodes and sched.num_preemptions == preempted_before:
            assert decodes <= ran, f"decodes {decodes - ran} waited"
    return outs


@pytest.fixture(scope="module")
def hf_greedy(model_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).eval()
    prompts = _prompts()
    with torch.no_grad():
        return prompts, [hf.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS,
                                     do_sample=False, eos_token_id=None,
                                     pad_token_id=0)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("budget,threshold", [(1, 0), (3, 0), (7, 0), (64, 0), (64, 1),
                                              (64, 3), (7, 4), (64, 16)])
def test_greedy_equals_transformers_for_any_budget(model_path, hf_greedy, budget, threshold):
    prompts, ref = hf_greedy
    engine = _engine(model_path, max_num_batched_tokens=budget, max_num_seqs=min(budget, 4),
                     long_prefill_token_threshold=threshold)
    outs = _run(engine, prompts, GREEDY, watch_decodes=True)
    assert [outs[f"r{i}"].outputs[0].token_ids for i in range(len(prompts))] == ref


def test_chunked_and_unchunked_runs_are_identical(model_path, hf_greedy):
    prompts, ref = hf_greedy
    whole = _run(_engine(model_path, enable_chunked_prefill=False), prompts, GREEDY)
    assert [whole[f"r{i}"].outputs[0].token_ids for i in range(len(prompts))] == ref


def test_a_long_prompt_never_stalls_running_decodes(model_path):
    engine = _engine(model_path, max_num_batched_tokens=8, max_num_seqs=4)
    for i in range(3):
        engine.add_request(f"short{i}", {"prompt_token_ids": [5 + i, 6]}, GREEDY)
    engine.step()
    engine.add_request("long", {"prompt_token_ids": list(range(3, 103))}, GREEDY)
    chunks = []
    while engine.has_unfinished_requests():
        engine.step()
        steps = dict((rid, (n, kind)) for rid, n, kind in engine.last_step)
        if "long" in steps and steps["long"][1] == "prefill":
            chunks.append(steps["long"][0])
            live = [f"short{i}" for i in range(3) if f"short{i}" in engine._groups
                    or f"short{i}" in steps]
            assert all(s in steps for s in live)  # every running short one decoded too
    assert sum(chunks) == 100 and len(chunks) > 10  # the prompt ran in chunks of <= 5


def test_long_prefill_token_threshold_caps_a_prompt_per_step(model_path):
    engine = _engine(model_path, max_num_batched_tokens=64, long_prefill_token_threshold=6)
    engine.add_request("a", {"prompt_token_ids": list(range(3, 33))}, GREEDY)
    engine.step()
    assert engine.last_step == [("a", 6, "prefill")]


@pytest.mark.parametrize("remaining,budget,threshold,chunked,expected", [
    (10, 4, 0, True, 4), (10, 4, 0, False, 0), (3, 4, 0, False, 3), (10, 64, 6, True, 6),
    (1, 1, 0, True, 1), (5, 0, 0, True, 0), (2, 64, 6, True, 2)])
def test_the_chunk_rule(remaining, budget, threshold, chunked, expected):
    assert tokens_this_step(remaining, budget, threshold, chunked) == expected


def test_seeded_sampling_is_the_same_with_and_without_chunking(model_path):
    prompts = _prompts(4, seed=9)
    params = [SamplingParams(temperature=0.9, top_p=0.9, seed=100 + i, max_tokens=10,
                             ignore_eos=True) for i in range(len(prompts))]

    def run(**kw):
        engine = _engine(model_path, **kw)
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.add_request(f"r{i}", {"prompt_token_ids": p}, sp)
        outs = {}
        while engine.has_unfinished_requests():
            outs.update({o.request_id: o.outputs[0].token_ids for o in engine.step()})
        return outs

    assert run(max_num_batched_tokens=5, max_num_seqs=4) == run(enable_chunked_prefill=False)


def test_prompt_logprobs_survive_preemption_in_the_middle_of_a_prefill(model_path):
    """A request preempted half-way through its chunked prompt recomputes it, but its
    prompt logprobs are neither restarted nor repeated."""
    def run(**kw):
        engine = _engine(model_path, **kw)
        engine.add_request("b", {"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
        engine.step()
        engine.add_request("a", {"prompt_token_ids": list(range(10, 40))},
                           SamplingParams(temperature=0, max_tokens=2, ignore_eos=True,
                                          prompt_logprobs=1))
        outs, preempted_mid_prefill = {}, False
        while engine.has_unfinished_requests():
            a = engine.scheduler.requests.get("a")
            computed = a.num_computed_tokens if a else 0
            outs.update({o.request_id: o for o in engine.step() if o.finished})
            if a is not None and a.status == RequestStatus.PREEMPTED and 0 < computed < 30:
                preempted_mid_prefill = True
        return outs, preempted_mid_prefill

    free, _ = run()
    tight, preempted = run(max_num_batched_tokens=4, max_num_seqs=2, num_kv_blocks=10)
    assert preempted, "the scenario must preempt 'a' in the middle of its prompt"
    assert len(tight["a"].prompt_logprobs) == 30
    assert _logprob_values(tight["a"].prompt_logprobs) == \
        _logprob_values(free["a"].prompt_logprobs)
    assert tight["a"].outputs[0].token_ids == free["a"].outputs[0].token_ids


def _logprob_values(entries):
    return [None if e is None else {t: round(lp.logprob, 9) for t, lp in e.items()}
            for e in entries]


# ---- chunking + preemption + aborts + seeds + prompt logprobs, against a free run -------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_chunking_preemption_aborts_prompt_logprobs(model_path, data):
    n = data.draw(st.integers(1, 5), label="requests")
    prompts = [data.draw(st.lists(st.integers(3, 255), min_size=1, max_size=24),
                         label=f"prompt{i}") for i in range(n)]
    arrivals = [data.draw(st.integers(0, 6), label=f"arrival{i}") for i in range(n)]
    aborts = {i: data.draw(st.integers(1, 12), label=f"abort{i}")
              for i in range(n) if data.draw(st.booleans(), label=f"aborted{i}")}
    budget = data.draw(st.integers(2, 16), label="budget")
    threshold = data.draw(st.sampled_from([0, 1, 3]), label="threshold")
    blocks = data.draw(st.integers(12, 20), label="kv blocks")  # 12 blocks of 4: preemption
    params = [SamplingParams(temperature=data.draw(st.sampled_from([0.0, 0.8])), seed=7 + i,
                             max_tokens=data.draw(st.integers(1, 10)), ignore_eos=True,
                             prompt_logprobs=data.draw(st.sampled_from([None, 0, 2])),
                             logprobs=1) for i in range(n)]

    free = run_with_arrivals(_engine(model_path, max_num_batched_tokens=256, max_num_seqs=8),
                             prompts, params, arrivals)
    tight = run_with_arrivals(_engine(model_path, max_num_batched_tokens=budget,
                                      max_num_seqs=min(budget, 4),
                                      long_prefill_token_threshold=threshold,
                                      num_kv_blocks=blocks, max_model_len=48),
                              prompts, params, arrivals, aborts)
    for rid, out in tight.items():
        i = int(rid[1:])
        ref, got = free[rid], out.outputs[0]
        if got.finish_reason == "abort":
            assert got.token_ids == ref.outputs[0].token_ids[:len(got.token_ids)]
            continue
        assert got.token_ids == ref.outputs[0].token_ids
        assert _logprob_values(got.logprobs) == _logprob_values(ref.outputs[0].logprobs)
        if params[i].prompt_logprobs is not None:
            assert len(out.prompt_logprobs) == len(prompts[i])
            assert _logprob_values(out.prompt_logprobs) == _logprob_values(ref.prompt_logprobs)
    assert set(free) == {f"r{i}" for i in range(n)}
    assert RequestStatus.FINISHED_ABORTED.finish_reason == "abort"
