"""Drive the real Scheduler and KVCacheManager with a fake model: no weights, no tensors.

The notebooks' timelines (``viz.batching.simulate_continuous``) and the KV-memory
measurements (``bench.kv_memory.run_workload``) both go through ``replay``, so what
they show is what the engine's scheduler does, not a copy of its rule. Each step the
"model" hands back one token for every scheduled sequence whose chunk reaches the end
of its sequence (``ScheduledSequence.sample``), as the model runner would.
"""
from __future__ import annotations

from folo_edu.config import SchedulerConfig
from folo_edu.engine.scheduler import Scheduler
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.request import Request
from folo_edu.sampling_params import SamplingParams

# The token the fake model "samples": any id will do, EOS is ignored.
FAKE_TOKEN = 5


def make_scheduler(num_blocks: int, tokens_per_block: int, max_model_len: int,
                   max_num_seqs: int, max_num_batched_tokens: int,
                   enable_chunked_prefill: bool = False) -> Scheduler:
    """A real Scheduler over a fresh KVCacheManager (``scheduler.kv``)."""
    return Scheduler(SchedulerConfig(max_num_seqs, max_num_batched_tokens,
                                     enable_chunked_prefill),
                     KVCacheManager(num_blocks, tokens_per_block), max_model_len)


def fake_request(request_id: str, prompt_len: int, output_len: int) -> Request:
    """A request of ``prompt_len`` FAKE_TOKENs that generates exactly ``output_len``
    tokens (greedy, EOS ignored)."""
    return Request(request_id, [FAKE_TOKEN] * prompt_len,
                   SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0))


def replay(scheduler: Scheduler, arrivals, on_schedule=None, next_token=None,
           max_steps: int = 1_000_000) -> dict[str, int]:
    """Step ``scheduler`` until every request has finished; return each one's finish step.

    arrivals: ``(step, Request)`` pairs; each request is added just before that step
    (ties in the order given). A step with nothing to run still counts, so step numbers
    match the arrival steps. ``on_schedule(step, out)`` is called after ``schedule()``
    and before the tokens go back: the moment the forward pass would run.
    ``next_token(scheduled_sequence)`` picks the token of a sequence that samples
    (default: FAKE_TOKEN). The finish step of a request is the step that sampled its
    last token.
    """
    pending = sorted(arrivals, key=lambda a: a[0])  # stable: ties keep their order
    requests = {r.request_id: r for _, r in pending}
    finish: dict[str, int] = {}
    step = 0
    while pending or scheduler.has_unfinished_requests():
        while pending and pending[0][0] <= step:
            scheduler.add_request(pending.pop(0)[1])
        out = scheduler.schedule()
        if on_schedule is not None:
            on_schedule(step, out)
        samplers = [s for s in out.scheduled if s.sample]
        scheduler.update_from_output(out, {s.request_id: FAKE_TOKEN if next_token is None
                                           else next_token(s) for s in samplers})
        finish.update((s.request_id, step) for s in samplers
                      if requests[s.request_id].is_finished)
        step += 1
        if step > max_steps:
            raise RuntimeError(f"replay: still unfinished after max_steps={max_steps}")
    return finish
