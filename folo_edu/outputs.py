"""What the engine hands back to the user: RequestOutput and CompletionOutput (M0).

Same names and fields as vLLM, so ``outs[0].outputs[0].text`` works the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """One token's log-probability, as vLLM returns it in ``logprobs`` dicts.

    ``rank`` is 1 for the most likely token of the raw model distribution (before
    temperature, penalties or filters); ``decoded_token`` is the token's text alone.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One position's logprobs: token id -> Logprob (the chosen token and the top-N).
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    """One generated sequence of a request (a request with n>1 has n of them)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None  # "stop", "length", "abort", "error"; None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Times (time.monotonic seconds) of one request's life; None until known.

    ``token_times[i]`` is when output token i reached the host, so every inter-token
    latency (ITL) can be read from here. With n > 1, the times of the first sample.
    """

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None
    first_scheduled_time: float | None = None
    last_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float | None:
        """Time to first token, in seconds."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def itls(self) -> list[float]:
        """The gaps between consecutive output tokens, in seconds."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def queue_time(self) -> float | None:
        """Arrival to first scheduled, in seconds."""
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one request as returned by ``LLM.generate`` or ``LLMEngine.step``."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    extra: dict = field(default_factory=dict, repr=False)
