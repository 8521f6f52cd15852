"""What the scheduler hands the model runner each step: plain data, no live requests.

The scheduler decides; the runner computes. Everything the runner needs to build the
batch and sample is copied (or shared read-only) here, so the runner never holds a
``Request`` and never changes one: the engine applies the runner's results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from folo_edu.sampling_params import SamplingParams


@dataclass
class ScheduledSequence:
    """One request's share of a step: compute ``token_ids`` at positions start, start+1, ..."""

    request_id: str
    token_ids: list[int]        # the tokens whose K/V this step computes (a prompt chunk,
                                # or the last sampled token for a decode)
    start: int                  # position of token_ids[0] (= tokens already in the cache)
    block_table: list[int]      # the request's physical blocks, in order
    sample: bool                # this chunk reaches the end of the sequence: sample a token
    sampling_params: SamplingParams
    # Read-only views of the request's tokens, for penalties and min_tokens.
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_ids: frozenset[int] = frozenset()
    # Prompt positions whose next-token logprobs this step must return:
    # hidden rows for positions [prompt_logprobs_start, prompt_logprobs_start + count).
    prompt_logprobs_start: int = 0
    prompt_logprobs_count: int = 0

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def end(self) -> int:
        """Sequence length once this step's tokens are in the cache."""
        return self.start + len(self.token_ids)

    @property
    def is_decode(self) -> bool:
        """One new token that is the last generated one (prefill chunks are prompt tokens)."""
        return self.sample and len(self.token_ids) == 1 and bool(self.output_token_ids)


@dataclass
class SchedulerOutput:
    """One step's plan. ``scheduled`` is in batch order: decodes first (shortest context
    first, so attention backends can group decodes of similar length), then prefills."""

    scheduled: list[ScheduledSequence]
    preempted: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)  # since the last step

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)
