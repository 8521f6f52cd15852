"""M3: the paged KV cache, its bookkeeping, and preemption by recompute.

Property tests drive the real Scheduler and KVCacheManager with random workloads
(lengths, arrival steps, aborts, block budgets, block sizes). A fake "model"
whose next token is a hash of the whole sequence stands in for the network in the
1,000-case test, so any token lost or duplicated by preemption changes the output.
A smaller property test runs the real tiny model in float64.
"""
from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from folo_edu import SamplingParams
from folo_edu.config import SchedulerConfig
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.engine.scheduler import Scheduler
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.request import Request, RequestStatus


def fake_next_token(ids: list[int]) -> int:
    return hashlib.blake2b(bytes(str(ids), "ascii"), digest_size=2).digest()[0] + 3


def check_invariants(sched: Scheduler, kv: KVCacheManager, after_update: bool) -> None:
    held = [b for table in kv.block_tables.values() for b in table]
    held_set = set(held)
    assert len(held) == len(held_set), "a block is held twice"
    assert len(held) + kv.num_free_blocks == kv.num_blocks, "blocks leaked or invented"
    # The free queue holds exactly the blocks nobody holds (sizes match, so no block is
    # both free and held iff the two sets are disjoint).
    assert held_set.isdisjoint(kv.pool.free_queue), "a block is both free and held"
    for req in sched.running:
        table = kv.block_tables[req.request_id]
        need = kv.blocks_needed(req.num_computed_tokens)
        assert len(table) == need if after_update else len(table) >= need, req
    for req in sched.waiting:
        assert req.request_id not in kv.block_tables, f"waiting {req} holds blocks"


def run_fake(workload, num_blocks, block_size, max_num_seqs, budget, chunked=False):
    """Run a workload through the real scheduler with the fake model. Returns outputs."""
    kv = KVCacheManager(num_blocks, block_size)
    sched = Scheduler(SchedulerConfig(max_num_seqs, budget, chunked), kv, max_model_len=512)
    outputs, step = {}, 0
    pending = sorted(workload, key=lambda w: w["arrival"])
    while pending or sched.has_unfinished_requests():
        while pending and pending[0]["arrival"] <= step:
            w = pending.pop(0)
            params = SamplingParams(max_tokens=w["out_len"], ignore_eos=True)
            sched.add_request(Request(w["id"], w["prompt"], params))
        for w in workload:
            if w.get("abort_at") == step and w["id"] in sched.requests:
                sched.finish_request(w["id"], RequestStatus.FINISHED_ABORTED)
        out = sched.schedule()
        check_invariants(sched, kv, after_update=False)
        sampled = {s.request_id: fake_next_token(sched.requests[s.request_id].all_token_ids)
                   for s in out.scheduled if s.sample}
        for req in sched.update_from_output(out, sampled):
            if req.is_finished:
                outputs[req.request_id] = list(req.output_token_ids)
        check_invariants(sched, kv, after_update=True)
        step += 1
        assert step < 5000, "the engine stalled"
    assert kv.num_free_blocks == kv.num_blocks and not kv.block_tables
    return outputs, sched.num_preemptions


workloads = st.lists(
    st.fixed_dictionaries({
        "prompt_len": st.integers(1, 40), "out_len": st.integers(1, 30),
        "arrival": st.integers(0, 15),
        "abort_at": st.one_of(st.none(), st.integers(0, 40))}),
    min_size=1, max_size=8)


def _materialise(ws):
    return [{"id": f"r{i}", "prompt": [(7 * i + j) % 200 + 3 for j in range(w["prompt_len"])],
             "out_len": w["out_len"], "arrival": w["arrival"], "abort_at": w["abort_at"]}
            for i, w in enumerate(ws)]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ws=workloads, block_size=st.sampled_from([1, 2, 4, 8, 16]),
       slack=st.integers(0, 12), max_num_seqs=st.integers(1, 6),
       chunked=st.booleans())
def test_paged_bookkeeping_property(ws, block_size, slack, max_num_seqs, chunked):
    workload = _materialise(ws)
    # The smallest cache that fits the largest request, plus random slack.
    biggest = max(-(-(w["prompt_len"] + w["out_len"]) // block_size) for w in ws)
    budget = 64 if chunked else 128
    got, _ = run_fake(workload, biggest + slack, block_size, max_num_seqs, budget, chunked)
    no_abort = [dict(w, abort_at=None) for w in workload]
    ref, _ = run_fake(no_abort, 10_000, block_size, 64, 10_000)
    for rid, tokens in got.items():
        if all(w["abort_at"] is None for w in workload if w["id"] == rid):
            assert tokens == ref[rid], f"{rid} changed under a small cache"


def test_preemption_happens_and_output_is_unchanged():
    workload = _materialise([{"prompt_len": 30, "out_len": 30, "arrival": 0, "abort_at": None}
                             for _ in range(6)])
    got, preemptions = run_fake(workload, num_blocks=16, block_size=4, max_num_seqs=6,
                                budget=512)
    ref, none = run_fake(workload, num_blocks=1000, block_size=4, max_num_seqs=6, budget=512)
    assert preemptions > 0 and none == 0
    assert got == ref


def test_preempts_the_most_recently_admitted():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=4)
    sched = Scheduler(SchedulerConfig(4, 64), kv, max_model_len=64)
    a = Request("a", [5] * 4, SamplingParams(max_tokens=20))
    b = Request("b", [5] * 4, SamplingParams(max_tokens=20))
    sched.add_request(a)
    sched.add_request(b)
    out = sched.schedule()  # both prefill: 1 block each
    sched.update_from_output(out, {"a": 9, "b": 9})
    for _ in range(3):  # decode until a and b need their second and third blocks
        out = sched.schedule()
        sched.update_from_output(out, {s.request_id: 9 for s in out.scheduled})
    out = sched.schedule()
    if not out.preempted:
        sched.update_from_output(out, {s.request_id: 9 for s in out.scheduled})
        out = sched.schedule()
    assert out.preempted == ["b"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert sched.waiting[0] is b and kv.get_block_table("b") == []


# ---- the real model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_path(tiny_model_dir):
    return str(tiny_model_dir("llama-gqa2-tied"))


def _generate(path, prompts, out_lens, **kw):
    engine = LLMEngine.from_kwargs(path, dtype="float64", skip_tokenizer_init=True,
                                   max_model_len=96, **kw)
    for i, (p, n) in enumerate(zip(prompts, out_lens)):
        engine.add_request(f"r{i}", {"prompt_token_ids": p},
                           SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    got = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.outputs[0].token_ids
    return got, engine.get_stats()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(lens=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=2, max_size=6),
       block_size=st.sampled_from([2, 4, 8]), slack=st.integers(0, 4))
def test_real_model_greedy_unchanged_by_small_cache(tiny_path, lens, block_size, slack):
    prompts = [[(11 * i + j) % 250 + 3 for j in range(p)] for i, (p, _) in enumerate(lens)]
    outs = [o for _, o in lens]
    biggest = max(-(-(p + o) // block_size) for p, o in lens)
    got, stats = _generate(tiny_path, prompts, outs, block_size=block_size,
                           num_kv_blocks=biggest + slack)
    ref, _ = _generate(tiny_path, prompts, outs, block_size=block_size, num_kv_blocks=512)
    assert got == ref
    assert stats["kv_blocks_used"] == 0


def test_real_model_preemption_counted_in_stats(tiny_path):
    prompts = [[(5 * i + j) % 250 + 3 for j in range(20)] for i in range(4)]
    got, stats = _generate(tiny_path, prompts, [40] * 4, block_size=4, num_kv_blocks=20)
    ref, ref_stats = _generate(tiny_path, prompts, [40] * 4, block_size=4, num_kv_blocks=200)
    assert stats["num_preemptions"] > 0 and ref_stats["num_preemptions"] == 0
    assert got == ref


def test_request_that_can_never_fit_is_refused(tiny_path):
    engine = LLMEngine.from_kwargs(tiny_path, dtype="float64", skip_tokenizer_init=True,
                                   max_model_len=96, block_size=4, num_kv_blocks=5)
    with pytest.raises(ValueError, match="needs 8 KV blocks .* only 5"):
        engine.add_request("big", {"prompt_token_ids": [5] * 20},
                           SamplingParams(max_tokens=12))
    engine.add_request("ok", {"prompt_token_ids": [5] * 8}, SamplingParams(max_tokens=4))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.get_stats()["kv_blocks_free"] == 5


def test_kv_cache_memory_bytes_sizes_the_pool(tiny_path):
    engine = LLMEngine.from_kwargs(tiny_path, dtype="float32", skip_tokenizer_init=True,
                                   max_model_len=96, block_size=16,
                                   kv_cache_memory_bytes=1 << 20)
    mc = engine.config.model_config
    per_block = 16 * mc.kv_bytes_per_token()
    assert engine.get_stats()["kv_blocks_total"] == (1 << 20) // per_block
    assert tuple(engine.model_runner.kv_cache.shape) == (
        2, mc.num_layers, (1 << 20) // per_block, 16, mc.num_kv_heads, mc.head_dim)
    assert engine.model_runner.kv_cache.dtype == torch.float32
