"""Shared by the engine property tests: run requests that arrive and abort at given steps."""
from __future__ import annotations


def run_with_arrivals(engine, prompts, params, arrivals, aborts=None, after_step=None):
    """Add request ``r{i}`` (prompts[i], params[i]) before step arrivals[i]; abort it
    before step aborts[i] if given and still unfinished; call after_step(engine) after
    every step. Returns {request id: final RequestOutput} and checks no block leaked."""
    aborts = aborts or {}
    outs, step = {}, 0
    while step <= max(arrivals) or engine.has_unfinished_requests():
        for i, prompt in enumerate(prompts):
            if arrivals[i] == step:
                engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params[i])
            if aborts.get(i) == step and f"r{i}" in engine._groups:
                engine.abort_request(f"r{i}")
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out
        if after_step is not None:
            after_step(engine)
        step += 1
        assert step < 2000, "the engine stalled"
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
    return outs
