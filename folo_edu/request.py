"""Request: one sequence the engine is serving, and its status machine (M0).

A request only holds token ids and counters; it never touches a tensor. The
scheduler moves it through the statuses below, and every move goes through
``Request.transition`` so that an illegal one raises at once.

    WAITING ──▶ RUNNING ──▶ FINISHED_STOPPED | FINISHED_LENGTH
       ▲           │
       └ PREEMPTED ◀┘      (any unfinished status) ──▶ FINISHED_ABORTED | FINISHED_ERROR
"""
from __future__ import annotations

import enum
import time

from folo_edu.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_ERROR = "finished_error"  # a step failed while computing this request

    @property
    def finished(self) -> bool:
        return self.value.startswith("finished")

    @property
    def finish_reason(self) -> str | None:
        """vLLM's finish_reason string: "stop", "length", "abort", "error" or None."""
        return {"finished_stopped": "stop", "finished_length": "length",
                "finished_aborted": "abort", "finished_error": "error"}.get(self.value)


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
             RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR}
_ENDED_EARLY = {RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR}
LEGAL_TRANSITIONS: dict[RequestStatus, set[RequestStatus]] = {
    RequestStatus.WAITING: {RequestStatus.RUNNING} | _ENDED_EARLY,
    RequestStatus.RUNNING: {RequestStatus.PREEMPTED} | _FINISHED,
    RequestStatus.PREEMPTED: {RequestStatus.RUNNING} | _ENDED_EARLY,
    # A request that finished in a step whose output then failed is marked an error.
    RequestStatus.FINISHED_STOPPED: {RequestStatus.FINISHED_ERROR},
    RequestStatus.FINISHED_LENGTH: {RequestStatus.FINISHED_ERROR},
    RequestStatus.FINISHED_ABORTED: set(),
    RequestStatus.FINISHED_ERROR: set(),
}


class IllegalTransition(ValueError):
    """Raised when a request is moved to a status its current one cannot reach."""


class Request:
    """One sequence: prompt ids, generated ids, and how many have been computed.

    ``num_computed_tokens`` counts the tokens whose K/V are in the cache. Each step
    the scheduler gives the request ``num_tokens - num_computed_tokens`` more
    (or fewer, under a token budget); this one number covers prefill, decode,
    chunked prefill and prefix-cache hits alike, as in vLLM v1.
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int],
                 sampling_params: SamplingParams, arrival_time: float | None = None,
                 eos_token_ids=(), prompt: str | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.sampling_params = sampling_params
        # Every id that ends the sequence (unless ignore_eos): the tokenizer's EOS and
        # those of the checkpoint's config.json and generation_config.json.
        self.eos_token_ids = frozenset(
            [eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids or ())
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        # When each output token reached the host (time.monotonic), for TTFT and ITL.
        self.token_times: list[float] = []
        self.finished_time: float | None = None
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache when admitted
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        # Per-token logprobs (dicts token_id -> Logprob) when params.logprobs is set.
        self.logprobs: list[dict] = []
        self.cumulative_logprob = 0.0
        # Entry i: token i's logprob given tokens < i (entry 0 is None), when asked for.
        self.prompt_logprobs: list[dict | None] | None = None

    # ---- sizes -----------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, start: int, end: int) -> list[int]:
        """The tokens at positions [start, end) of prompt + output, without copying both."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:end] + self.output_token_ids[:max(0, end - p)]

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    # ---- status machine ----------------------------------------------------------
    def transition(self, new: RequestStatus) -> None:
        """Move to ``new``; raise IllegalTransition if that move is not allowed."""
        if new not in LEGAL_TRANSITIONS[self.status]:
            allowed = sorted(s.name for s in LEGAL_TRANSITIONS[self.status]) or ["nothing"]
            raise IllegalTransition(
                f"request {self.request_id!r}: status {self.status.name} -> {new.name} "
                f"is not allowed; from {self.status.name} it may go to {', '.join(allowed)}")
        if new == RequestStatus.PREEMPTED:
            # Preemption by recompute: the cache is freed, so every token is recomputed.
            self.num_computed_tokens = 0
            self.num_preemptions += 1
        if new.finished:
            self.finished_time = time.monotonic()
        self.status = new

    def append_output_token(self, token_id: int) -> None:
        now = time.monotonic()
        if self.first_token_time is None:
            self.first_token_time = now
        self.token_times.append(now)
        self.output_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (f"Request(id={self.request_id!r}, status={self.status.name}, "
                f"prompt={self.num_prompt_tokens} tok, output={self.num_output_tokens} tok, "
                f"computed={self.num_computed_tokens})")
