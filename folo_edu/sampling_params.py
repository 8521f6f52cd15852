"""SamplingParams: how one request picks its tokens (M0).

Field names, defaults and meanings follow vLLM's ``SamplingParams`` so that code
written for one runs on the other. Every invalid value raises ValueError (or
TypeError for a wrong type) naming the field, the value and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# Below this temperature sampling is treated as greedy, as in vLLM.
GREEDY_EPS = 1e-5


class RequestOutputKind(Enum):
    """What ``LLMEngine.step`` returns for a request (vLLM's output_kind)."""

    CUMULATIVE = 0  # the whole text and token ids so far, every step
    DELTA = 1  # only what is new since the last output
    FINAL_ONLY = 2  # nothing until the request finishes


def _check_type(name, value, types, allowed):
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"SamplingParams.{name}={value!r}: expected {allowed}")


def _check_int(name, value, lo, allowed, optional=False):
    if optional and value is None:
        return
    _check_type(name, value, int, allowed)
    if value < lo:
        raise ValueError(f"SamplingParams.{name}={value!r}: expected {allowed}")


def _check_float(name, value, lo, hi, allowed, lo_open=False):
    _check_type(name, value, (int, float), allowed)
    if value != value or value < lo or value > hi or (lo_open and value == lo):
        raise ValueError(f"SamplingParams.{name}={value!r}: expected {allowed}")


@dataclass
class SamplingParams:
    """Parameters for one request's sampling, with vLLM's names, meanings and defaults.

    temperature=0 means greedy. top_k=0 (or -1) and top_p=1 and min_p=0 switch
    those filters off. max_tokens=None means "until max_model_len".

    Fields (default in brackets):

    n: how many completions to return for the prompt; each is sampled on its own [1].
    presence_penalty: subtracted from the logit of every token already generated at
        least once; > 0 favours new tokens, < 0 repetition; in [-2, 2] [0.0].
    frequency_penalty: subtracted once per earlier occurrence of the token in the
        generated text; > 0 favours new tokens, < 0 repetition; in [-2, 2] [0.0].
    repetition_penalty: divides positive (multiplies negative) logits of tokens seen in
        the prompt or the output; > 1 favours new tokens, < 1 repetition [1.0].
    temperature: divides the logits before sampling; lower is more deterministic, 0 is
        greedy (the most likely token) [1.0].
    top_p: nucleus sampling: keep the most likely tokens whose total probability reaches
        top_p, in (0, 1]; 1 keeps all [1.0].
    top_k: keep only the k most likely tokens; 0 or -1 keeps all [0].
    min_p: drop tokens less likely than min_p times the most likely one; in [0, 1],
        0 keeps all [0.0].
    seed: seed of this request's own random generator, so its samples repeat; None uses
        the engine's generator (seeded by LLM(seed=...)) [None].
    stop: a string or a list of strings that end the request when the text contains one
        (finish_reason "stop", stop_reason the string); cut off the text unless
        include_stop_str_in_output [None, kept as an empty list].
    stop_token_ids: token ids that end the request when sampled (finish_reason "stop",
        stop_reason the id) [None, kept as an empty list].
    ignore_eos: keep generating after the model's end-of-sequence token [False].
    max_tokens: the most tokens to generate per completion; None means up to
        max_model_len [16].
    min_tokens: generate at least this many tokens before EOS or stop_token_ids may end
        the request (their logits are masked until then) [0].
    logprobs: also return, for each generated token, the log-probabilities of this many
        most likely tokens plus the sampled one; None returns none [None].
    prompt_logprobs: the same for every prompt token (from the prefill) [None].
    skip_special_tokens: leave special tokens (such as EOS) out of the text [True].
    include_stop_str_in_output: keep the matched stop string at the end of the
        text [False].
    output_kind: what LLMEngine.step returns for the request: CUMULATIVE (everything so
        far), DELTA (only what is new) or FINAL_ONLY (only the finished output)
        [RequestOutputKind.CUMULATIVE].
    all_stop_token_ids: set by the engine, not by you: stop_token_ids plus the model's
        EOS ids, which min_tokens masks [empty set].
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Filled by the engine: the eos ids of the model, so min_tokens can block them.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if self.top_k == -1:
            self.top_k = 0
        self._verify()
        self.all_stop_token_ids = set(self.stop_token_ids)

    def _verify(self) -> None:
        _check_int("n", self.n, 1, "an int >= 1")
        _check_float("presence_penalty", self.presence_penalty, -2, 2, "a float in [-2, 2]")
        _check_float("frequency_penalty", self.frequency_penalty, -2, 2, "a float in [-2, 2]")
        _check_float("repetition_penalty", self.repetition_penalty, 0, float("inf"),
                     "a float > 0", lo_open=True)
        _check_float("temperature", self.temperature, 0, float("inf"), "a float >= 0")
        _check_float("top_p", self.top_p, 0, 1, "a float in (0, 1]", lo_open=True)
        _check_int("top_k", self.top_k, 0, "an int >= 1, or 0 or -1 to disable")
        _check_float("min_p", self.min_p, 0, 1, "a float in [0, 1]")
        if self.seed is not None:
            _check_type("seed", self.seed, int, "an int or None")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise TypeError(f"SamplingParams.stop={self.stop!r}: expected a str or a list of str")
        if any(s == "" for s in self.stop):
            raise ValueError(f"SamplingParams.stop={self.stop!r}: expected non-empty strings")
        if not isinstance(self.stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise ValueError(f"SamplingParams.stop_token_ids={self.stop_token_ids!r}: "
                             "expected a list of ints >= 0")
        _check_int("max_tokens", self.max_tokens, 1, "an int >= 1 or None", optional=True)
        _check_int("min_tokens", self.min_tokens, 0, "an int >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"SamplingParams.min_tokens={self.min_tokens!r}: expected "
                             f"<= max_tokens={self.max_tokens}")
        _check_int("logprobs", self.logprobs, 0, "an int >= 0 or None", optional=True)
        _check_int("prompt_logprobs", self.prompt_logprobs, 0, "an int >= 0 or None",
                   optional=True)
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SamplingParams.{name}={getattr(self, name)!r}: expected a bool")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError(f"SamplingParams.output_kind={self.output_kind!r}: "
                            "expected a RequestOutputKind")

    @property
    def greedy(self) -> bool:
        """True when the request takes the argmax token (temperature ~ 0)."""
        return self.temperature < GREEDY_EPS

    def clone(self, **changes) -> "SamplingParams":
        """A validated copy with some fields changed."""
        from dataclasses import fields

        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "all_stop_token_ids"}
        kept.update(changes)
        out = SamplingParams(**kept)
        out.all_stop_token_ids |= self.all_stop_token_ids
        return out
