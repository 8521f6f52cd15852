"""Scheduler: which requests run this step, and how many tokens each (vLLM v1 rule).

Every request carries num_computed_tokens. Each step it is owed
num_tokens - num_computed_tokens more: the whole prompt on its first step
(prefill), then one token per step (decode). The step has a token budget
(max_num_batched_tokens) and a seat limit (max_num_seqs); running requests are
served first, in FCFS order, then waiting ones join while room remains. So one
step can mix prefills and decodes, and a finished request's seat is refilled at
the very next step. This is continuous batching.

When the KV cache runs out, the most recently admitted running request is
preempted: its blocks are freed and it goes back to the front of the queue, to be
recomputed later. The scheduler never touches a tensor.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from folo_edu.config import SchedulerConfig
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    block_table: list[int]


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]  # decodes (one new token) first, then prefills
    preempted: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # since the last step

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager, max_model_len: int):
        self.config = config
        self.kv = kv_manager
        self.max_model_len = max_model_len
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
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        scheduled: list[tuple[Request, int]] = []
        preempted: list[str] = []

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                if not chunked:
                    i += 1
                    continue
                n = budget
            while not self.kv.allocate_slots(req, n):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                scheduled.append((req, n))
                budget -= n
                i += 1

        # New requests join only if nobody had to be preempted this step.
        while (self.waiting and not preempted and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            req = self.waiting[0]
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                if not chunked:
                    break
                n = budget
            if not self.kv.allocate_slots(req, n):
                break
            self.waiting.popleft()
            req.transition(RequestStatus.RUNNING)
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n

        scheduled.sort(key=lambda rn: rn[1] != 1)  # stable: decodes first
        out = SchedulerOutput(
            [ScheduledRequest(r, n, self.kv.get_block_table(r.request_id)) for r, n in scheduled],
            preempted, self._finished_ids)
        self._finished_ids = []
        return out

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
            req = s.request
            if req.is_finished:  # aborted between schedule() and now
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
        """Token-level stop checks, in vLLM's order. Stop *strings* are found later,
        on the text, by the output processor."""
        p = req.sampling_params
        if (req.num_output_tokens >= (p.max_tokens or self.max_model_len)
                or req.num_tokens >= self.max_model_len):
            return RequestStatus.FINISHED_LENGTH
        if req.num_output_tokens < p.min_tokens:
            return None
        if not p.ignore_eos and token == req.eos_token_id:
            return RequestStatus.FINISHED_STOPPED
        if token in p.stop_token_ids:
            req.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
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
