"""The OpenAI request bodies (pydantic) and how they become SamplingParams.

Field names, meanings and defaults follow OpenAI's API and vLLM's extensions to it
(top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids, ...), which
the openai client sends through ``extra_body``. Any other field is refused with a 400
that names it (``extra="forbid"``), rather than silently ignored.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from folo_edu.sampling_params import RequestOutputKind, SamplingParams

MAX_LOGPROBS = 20  # as vLLM's default max_logprobs


class BadRequest(ValueError):
    """A client mistake: answered with ``status`` (400 unless said) and the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 err_type: str | None = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.err_type = err_type or {400: "BadRequestError", 401: "AuthenticationError",
                                     404: "NotFoundError", 413: "RequestTooLargeError",
                                     429: "RateLimitError",
                                     503: "ServiceUnavailableError"}.get(status, "Error")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored, as in vLLM
    # vLLM's extensions (openai client: extra_body={...})
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams for this body; a bad value raises BadRequest naming the field."""
        if logprobs is not None and logprobs > MAX_LOGPROBS:
            raise BadRequest(f"logprobs={logprobs}: expected at most {MAX_LOGPROBS}",
                             "logprobs")
        kwargs = dict(
            n=self.n, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k is None else self.top_k,
            min_p=0.0 if self.min_p is None else self.min_p,
            repetition_penalty=(1.0 if self.repetition_penalty is None
                                else self.repetition_penalty),
            seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, max_tokens=max_tokens, min_tokens=self.min_tokens,
            logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            output_kind=RequestOutputKind.DELTA if self.stream
            else RequestOutputKind.FINAL_ONLY)
        try:
            return SamplingParams(**kwargs)
        except (ValueError, TypeError) as e:
            raise bad_request_from(e) from e


def bad_request_from(error: Exception) -> BadRequest:
    """A library error ('SamplingParams.top_p=1.5: expected ...', 'prompt has 9000
    tokens; ...') as a BadRequest whose message starts with the API's field name."""
    message = str(error).replace("SamplingParams.", "", 1)
    head = message.split("=", 1)[0].split(":", 1)[0].split(" ", 1)[0].strip()
    param = head if head.isidentifier() else None
    if param in ("prompt_token_ids", "request_id"):
        param = "prompt"
    return BadRequest(message, param)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None

    def check_unsupported(self) -> None:
        if self.echo:
            raise BadRequest("echo=true: not supported by this server", "echo")
        if self.suffix:
            raise BadRequest("suffix: not supported by this server", "suffix")
        if self.logit_bias:
            raise BadRequest("logit_bias: not supported by this server", "logit_bias")
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequest(f"best_of={self.best_of}: only best_of == n is supported",
                             "best_of")

    def prompts(self) -> list:
        """The prompt(s) as the engine takes them: str or {"prompt_token_ids": [...]}."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise BadRequest("prompt=[]: expected a string, a list of strings or token ids",
                             "prompt")
        if all(isinstance(x, int) for x in p):
            return [{"prompt_token_ids": list(p)}]
        if all(isinstance(x, str) for x in p):
            return list(p)
        return [{"prompt_token_ids": list(ids)} for ids in p]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; a list of parts may only hold text parts."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"messages: content part {part!r}: only "
                                 "{'type': 'text', 'text': ...} parts are supported",
                                 "messages")
            texts.append(part["text"])
        return "\n".join(texts)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # vLLM extension

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("top_logprobs: needs logprobs=true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]
