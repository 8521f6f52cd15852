"""M6 prefix caching: a cache hit is only a head start, never a different answer.

Tiny float64 models: tokens with caching on must equal tokens with caching off (and
transformers') for shared system prompts, multi-turn chats, identical prompts, prompts
that are prefixes of each other, n>1, eviction under a tight cache, and forced hash
collisions; the bookkeeping (reference counts, free queue) must hold after every step.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_runs import run_with_arrivals

from folo_edu import LLM, SamplingParams
from folo_edu.engine.llm_engine import LLMEngine

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SYSTEM = list(range(40, 75))  # 35 tokens: 8 full blocks of 4 and a partial one


@pytest.fixture(scope="module")
def model_path(tiny_model_dir):
    return str(tiny_model_dir("llama-mha-untied-rope3"))


def _engine(path, **kw):
    kw = {"dtype": "float64", "skip_tokenizer_init": True, "max_model_len": 128,
          "num_kv_blocks": 128, "block_size": 4, **kw}
    return LLMEngine.from_kwargs(path, **kw)


def check_bookkeeping(engine):
    """Reference counts equal the number of block tables holding each block; a block is
    free exactly when nobody holds it; cached blocks are known both ways."""
    kv, pool = engine.kv_manager, engine.kv_manager.pool
    holders = [0] * pool.num_blocks
    for table in kv.block_tables.values():
        assert len(table) == len(set(table)), "a table holds a block twice"
        for b in table:
            holders[b] += 1
    assert holders == pool.ref_counts
    assert set(pool.free_queue) == {b for b in range(pool.num_blocks) if holders[b] == 0}
    assert {pool.cached[h] for h in pool.cached} == set(pool.hash_of)
    assert all(pool.cached[h] == b for b, h in pool.hash_of.items())


def _run_sequential(engine, prompts, params=GREEDY):
    """One request at a time (so later ones can hit earlier ones); {id: RequestOutput}."""
    outs = {}
    for rid, ids in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": ids}, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                outs[out.request_id] = out
            check_bookkeeping(engine)
    return outs


def _tokens(outs):
    return {rid: [c.token_ids for c in out.outputs] for rid, out in outs.items()}


def _workloads():
    a, b = [5, 9, 11, 13, 17, 19, 23, 29], [31, 37, 41]
    return {
        "system prompt": {f"q{i}": SYSTEM + [100 + i, 101 + i, 102] for i in range(4)},
        "identical": {f"r{i}": SYSTEM + [7] for i in range(3)},
        "prefixes of each other": {"long": a * 3, "mid": a * 2, "short": a,
                                   "again": a * 3 + b},
        "block-aligned": {"x": list(range(3, 19)), "y": list(range(3, 19))},  # 16 = 4 blocks
        "one token": {"p": [7], "q": [7]},
    }


@pytest.mark.parametrize("name", list(_workloads()))
def test_cache_on_gives_the_same_tokens_as_cache_off(model_path, name):
    prompts = _workloads()[name]
    on = _run_sequential(_engine(model_path), prompts)
    off = _run_sequential(_engine(model_path, enable_prefix_caching=False), prompts)
    assert _tokens(on) == _tokens(off)
    assert all(o.num_cached_tokens == 0 for o in off.values())
    if name != "one token":
        assert sum(o.num_cached_tokens for o in on.values()) > 0  # the cache was used
    for out in on.values():
        assert out.num_cached_tokens <= len(out.prompt_token_ids) - 1
        assert out.num_cached_tokens % 4 == 0  # whole blocks only


def test_hits_equal_transformers(model_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).eval()
    prompts = _workloads()["system prompt"]
    outs = _run_sequential(_engine(model_path), prompts)
    for rid, ids in prompts.items():
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        assert outs[rid].outputs[0].token_ids == ref
    assert [outs[f"q{i}"].num_cached_tokens for i in range(4)] == [0, 32, 32, 32]


def test_multi_turn_chat_hits_the_first_turn(model_path):
    engine = _engine(model_path)
    turn1 = SYSTEM + [101, 102]
    first = _run_sequential(engine, {"t1": turn1})["t1"]
    turn2 = turn1 + first.outputs[0].token_ids + [103, 104, 105]
    second = _run_sequential(engine, {"t2": turn2})["t2"]
    # Blocks full of turn 1's prompt and of its computed outputs are reused.
    assert second.num_cached_tokens >= 36 and second.num_cached_tokens % 4 == 0
    cold = _run_sequential(_engine(model_path, enable_prefix_caching=False), {"t2": turn2})
    assert second.outputs[0].token_ids == cold["t2"].outputs[0].token_ids
    stats = engine.get_stats()
    assert stats["prefix_cache_hits"] == second.num_cached_tokens
    assert stats["prefix_cache_queries"] == len(turn1) + len(turn2)
    assert 0 < stats["prefix_cache_hit_rate"] < 1


def test_n_greater_than_one_and_concurrent_requests(model_path):
    params = SamplingParams(n=3, temperature=0.8, seed=4, max_tokens=6, ignore_eos=True)
    prompts = {"a": SYSTEM + [1, 2], "b": SYSTEM + [3]}

    def run(**kw):
        engine = _engine(model_path, **kw)
        for rid, ids in prompts.items():
            engine.add_request(rid, {"prompt_token_ids": ids}, params)
        outs = {}
        while engine.has_unfinished_requests():
            outs.update({o.request_id: o for o in engine.step()})
            check_bookkeeping(engine)
        return _tokens(outs)

    assert run() == run(enable_prefix_caching=False)


def test_eviction_under_a_tight_cache_keeps_tokens_right(model_path):
    prompts = {f"p{i}": SYSTEM[: 10 + 5 * i] + [200 + i] * 3 for i in range(6)}
    prompts.update({f"again{i}": SYSTEM[: 10 + 5 * i] + [200 + i] * 3 for i in range(6)})
    engine = _engine(model_path, num_kv_blocks=16)
    on = _run_sequential(engine, prompts)
    off = _run_sequential(_engine(model_path, enable_prefix_caching=False), prompts)
    assert _tokens(on) == _tokens(off)
    assert engine.get_stats()["prefix_cache_evictions"] > 0


def test_a_forced_hash_collision_is_harmless(model_path):
    """Every block hashes to the same value: lookups must still never hand out K/V of
    other tokens (the pool confirms each hit by its tokens and parent)."""
    prompts = {"a": SYSTEM + [1], "b": [9] * 12 + SYSTEM, "c": SYSTEM + [1, 2],
               "d": [9] * 12 + SYSTEM[:20]}
    engine = _engine(model_path)
    engine.kv_manager.hash_fn = lambda parent, tokens, extra=(): b"collide"
    on = _run_sequential(engine, prompts)
    off = _run_sequential(_engine(model_path, enable_prefix_caching=False), prompts)
    assert _tokens(on) == _tokens(off)
    assert len(engine.kv_manager.pool.cached) <= 1


def test_prompt_logprobs_requests_compute_their_whole_prompt(model_path):
    engine = _engine(model_path)
    _run_sequential(engine, {"warm": SYSTEM + [1]})
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1, ignore_eos=True)
    out = _run_sequential(engine, {"lp": SYSTEM + [1]}, params)["lp"]
    assert out.num_cached_tokens == 0 and len(out.prompt_logprobs) == len(SYSTEM) + 1


def test_reset_prefix_cache(model_path):
    llm = LLM(model_path, dtype="float64", skip_tokenizer_init=True, max_model_len=128,
              block_size=4)
    engine = llm.llm_engine
    llm.generate({"prompt_token_ids": SYSTEM}, GREEDY, use_tqdm=False)
    assert engine.kv_manager.pool.cached
    engine.add_request("busy", {"prompt_token_ids": SYSTEM}, GREEDY)
    engine.step()
    assert llm.reset_prefix_cache() is False and engine.kv_manager.pool.cached  # refused
    engine.abort_request("busy")
    assert llm.reset_prefix_cache() is True and not engine.kv_manager.pool.cached
    out = llm.generate({"prompt_token_ids": SYSTEM}, GREEDY, use_tqdm=False)[0]
    assert out.num_cached_tokens == 0


@pytest.mark.parametrize("kw,exc,match", [
    ({"kv_cache": "contiguous", "enable_prefix_caching": True}, ValueError,
     "CacheConfig.enable_prefix_caching=True: expected False with kv_cache='contiguous'"),
    ({"enable_prefix_caching": "yes"}, TypeError,
     "CacheConfig.enable_prefix_caching='yes': expected a bool")])
def test_bad_prefix_caching_settings(model_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        _engine(model_path, **kw)


def test_contiguous_cache_turns_caching_off_by_default(model_path):
    engine = _engine(model_path, kv_cache="contiguous", num_kv_blocks=4)
    assert engine.config.cache_config.enable_prefix_caching is False


# ---- property: small alphabet, arrivals, aborts, preemption, chunking ------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_prefix_cache_bookkeeping_and_tokens(model_path, data):
    n = data.draw(st.integers(2, 6), label="requests")
    stem = data.draw(st.lists(st.integers(3, 5), min_size=4, max_size=16), label="stem")
    prompts = [stem[:data.draw(st.integers(1, len(stem)))] +
               data.draw(st.lists(st.integers(3, 5), max_size=6)) for _ in range(n)]
    arrivals = [data.draw(st.integers(0, 8)) for _ in range(n)]
    aborts = {i: data.draw(st.integers(1, 10)) for i in range(n) if data.draw(st.booleans())}
    budget = data.draw(st.integers(4, 24), label="budget")
    blocks = data.draw(st.integers(10, 24), label="kv blocks")
    params = [SamplingParams(temperature=0, max_tokens=data.draw(st.integers(1, 8)),
                             ignore_eos=True) for _ in range(n)]

    free = run_with_arrivals(_engine(model_path, enable_prefix_caching=False,
                                     max_num_batched_tokens=512), prompts, params, arrivals)
    tight = run_with_arrivals(_engine(model_path, max_num_batched_tokens=budget, max_num_seqs=4,
                                      num_kv_blocks=blocks, max_model_len=40),
                              prompts, params, arrivals, aborts, after_step=check_bookkeeping)
    for rid, out in tight.items():
        got, ref = out.outputs[0], free[rid].outputs[0].token_ids
        assert got.token_ids == (ref[:len(got.token_ids)] if got.finish_reason == "abort"
                                 else ref)


def test_blocks_of_a_failed_step_are_not_left_in_the_cache(model_path, monkeypatch):
    """Blocks are cached when allocated; if the step then fails, they hold no K/V and must
    be forgotten, or the next request with that prefix would read garbage."""
    from folo_edu.engine.llm_engine import EngineStepError

    engine = _engine(model_path)
    real, calls = engine.model_runner.model.forward, [0]

    def fail_first(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model_runner.model, "forward", fail_first)
    engine.add_request("doomed", {"prompt_token_ids": SYSTEM}, GREEDY)
    with pytest.raises(EngineStepError):
        engine.step()
    assert not engine.kv_manager.pool.cached
    again = _run_sequential(engine, {"again": SYSTEM + [1]})["again"]
    cold = _run_sequential(_engine(model_path, enable_prefix_caching=False),
                           {"again": SYSTEM + [1]})["again"]
    assert again.num_cached_tokens == 0
    assert again.outputs[0].token_ids == cold.outputs[0].token_ids


def test_requests_admitted_in_one_step_share_what_the_first_fills(model_path):
    engine = _engine(model_path)
    for i in range(3):
        engine.add_request(f"q{i}", {"prompt_token_ids": SYSTEM + [100 + i]}, GREEDY)
    outs = {}
    while engine.has_unfinished_requests():
        outs.update({o.request_id: o for o in engine.step()})
        check_bookkeeping(engine)
    assert [outs[f"q{i}"].num_cached_tokens for i in range(3)] == [0, 32, 32]
    off = _run_sequential(_engine(model_path, enable_prefix_caching=False),
                          {f"q{i}": SYSTEM + [100 + i] for i in range(3)})
    assert _tokens(outs) == _tokens(off)
