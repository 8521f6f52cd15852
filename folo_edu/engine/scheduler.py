"""Scheduler: which requests run this step, and how many tokens each (vLLM v1 rule).

Every request carries num_computed_tokens. Each step it is owed
num_tokens - num_computed_tokens more: its prompt (prefill), then one token per step
(decode). The step has a token budget (max_num_batched_tokens) and a seat limit
(max_num_seqs). Running requests are served first, decodes before unfinished prefills,
then waiting ones join while room remains. So one step mixes prefills and decodes, and
a finished request's seat is refilled at the very next step (continuous batching).

With chunked prefill (the default, as in vLLM v1) a prompt that does not fit the budget
left runs in chunks over several steps, while every running decode still gets its token
each step (stall-free batching, Sarathi-Serve). ``tokens_this_step`` is that rule.

When the KV cache runs out, the most recently admitted running request is
preempted: its blocks are freed and it goes back to the front of the queue, to be
recomputed later. The scheduler never touches a tensor.
"""
from __future__ import annotations

import time
from collections import deque

from folo_edu.config import SchedulerConfig
from folo_edu.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.request import Request, RequestStatus


def tokens_this_step(remaining: int, budget: int, threshold: int, chunked: bool) -> int:
    """The chunk rule: how many of a request's ``remaining`` tokens run this step.

    ``budget`` is what is left of max_num_batched_tokens; ``threshold`` is
    long_prefill_token_threshold (0 = no cap). With chunked prefill a request takes what
    fits; without it, all or nothing (0 means it waits). Notebook 07's lab plugs a
    learner's version in through ``Scheduler.token_rule``.
    """
    n = min(remaining, threshold) if threshold > 0 else remaining
    if n <= budget:
        return n
    return budget if chunked else 0


class Scheduler:
    """Decides, each step, which requests run and how many tokens each gets."""

    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager, max_model_len: int,
                 token_rule=tokens_this_step):
        self.config = config
        self.kv = kv_manager
        self.max_model_len = max_model_len
        self.token_rule = token_rule
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._finished_ids: list[str] = []

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step -----------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Plan one step: running requests first (decodes, then unfinished chunked
        prefills), then waiting ones in FCFS order while budget and seats remain."""
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        threshold = self.config.long_prefill_token_threshold
        scheduled: dict[str, tuple[Request, int]] = {}
        preempted: list[str] = []

        # Decodes first, so no running decode waits behind a long prompt's chunk.
        for req in sorted(self.running, key=lambda r: r.num_tokens - r.num_computed_tokens > 1):
            if budget == 0:
                break
            if req.status != RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = self.token_rule(req.num_tokens - req.num_computed_tokens, budget, threshold,
                                chunked)
            if n == 0:
                continue
            while not self.kv.allocate_slots(req, n):
                victim = self.running.pop()  # the most recently admitted
                if victim.request_id in scheduled:  # it already had its share: give it back
                    budget += scheduled.pop(victim.request_id)[1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                scheduled[req.request_id] = (req, n)
                budget -= n

        # New (or preempted) requests join only if nobody had to be preempted this step.
        while (self.waiting and not preempted and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            req = self.waiting[0]
            # A prefix-cache hit is a head start: those tokens are already computed. A
            # request that wants prompt logprobs computes its whole prompt (as vLLM).
            hit = ([] if req.sampling_params.prompt_logprobs is not None
                   else self.kv.find_cached_prefix(req))
            computed = len(hit) * self.kv.block_size
            n = self.token_rule(req.num_tokens - computed, budget, threshold, chunked)
            if n == 0 or not self.kv.allocate_slots(req, n, hit):
                break
            self.waiting.popleft()
            req.transition(RequestStatus.RUNNING)
            req.num_computed_tokens = computed
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
                req.num_cached_tokens = computed
            self.running.append(req)
            scheduled[req.request_id] = (req, n)
            budget -= n

        # Batch order: decodes first, shortest context first, then prefills (stable).
        order = sorted(scheduled.values(),
                       key=lambda rn: (rn[1] != 1, rn[0].num_tokens if rn[1] == 1 else 0))
        out = SchedulerOutput([self._plan(r, n) for r, n in order],
                              preempted, self._finished_ids)
        self._finished_ids = []
        self._check_invariants(out)
        return out

    def _plan(self, req: Request, n: int) -> ScheduledSequence:
        """The plain-data view of one request's share of this step."""
        start, end = req.num_computed_tokens, req.num_computed_tokens + n
        lp_start, lp_count = 0, 0
        if req.prompt_logprobs is not None:
            # Entry i of prompt_logprobs is token i's logprob, computed from the hidden
            # state at position i - 1. Ask only for those not yet known, so a chunked or
            # preempted prompt never gets one twice.
            lp_start = max(start, len(req.prompt_logprobs) - 1)
            lp_count = max(0, min(end, req.num_prompt_tokens - 1) - lp_start)
        return ScheduledSequence(
            request_id=req.request_id, token_ids=req.token_ids_between(start, end), start=start,
            block_table=list(self.kv.get_block_table(req.request_id)),
            sample=end == req.num_tokens, sampling_params=req.sampling_params,
            prompt_token_ids=req.prompt_token_ids, output_token_ids=req.output_token_ids,
            eos_token_ids=frozenset(req.eos_token_ids),
            prompt_logprobs_start=lp_start, prompt_logprobs_count=lp_count)

    def _check_invariants(self, out: SchedulerOutput) -> None:
        """Cheap checks of what every step must keep (vLLM asserts the same two)."""
        budget = self.config.max_num_batched_tokens
        assert out.num_batched_tokens <= budget, \
            f"scheduled {out.num_batched_tokens} tokens, budget {budget}"
        assert len(self.running) <= self.config.max_num_seqs, \
            f"{len(self.running)} running, max_num_seqs {self.config.max_num_seqs}"
        assert all(s.num_new_tokens > 0 for s in out.scheduled), "a request got 0 tokens"
        assert all(self.requests[s.request_id].status == RequestStatus.RUNNING
                   for s in out.scheduled), "a scheduled request is not running"

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.transition(RequestStatus.PREEMPTED)
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def update_from_output(self, out: SchedulerOutput,
                           sampled: dict[str, int]) -> list[Request]:
        """Advance every scheduled request; append sampled tokens; finish the stopped.

        Returns the requests that got a new token this step.
        """
        updated = []
        for s in out.scheduled:
            req = self.requests.get(s.request_id)
            if req is None:  # finished (aborted) between schedule() and now
                continue
            req.num_computed_tokens += s.num_new_tokens
            token = sampled.get(req.request_id)
            if token is None:  # a prefill chunk that did not reach the end yet
                continue
            req.append_output_token(token)
            status = self._check_stop(req, token)
            if status is not None:
                self.finish_request(req.request_id, status)
            updated.append(req)
        return updated

    def _check_stop(self, req: Request, token: int) -> RequestStatus | None:
        """Token-level stop checks in vLLM v1's order (vllm/v1/core/sched/utils.py,
        check_stop): nothing stops a request before min_tokens; then EOS, then a stop
        token id, then the length caps. So EOS on the last allowed token is "stop".
        Stop *strings* are found later, on the text, by the output processor."""
        p = req.sampling_params
        if req.num_output_tokens < p.min_tokens:
            return None
        if not p.ignore_eos and token in req.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if token in p.stop_token_ids:
            req.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
        if (req.num_output_tokens >= (p.max_tokens or self.max_model_len)
                or req.num_tokens >= self.max_model_len):
            return RequestStatus.FINISHED_LENGTH
        return None

    def finish_request(self, request_id: str, status: RequestStatus) -> None:
        """Finish (or abort) a request: it leaves its queue and frees its blocks at once."""
        req = self.requests.pop(request_id)
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self.kv.free(req)
        req.transition(status)
        self._finished_ids.append(request_id)
