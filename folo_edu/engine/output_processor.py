"""From token ids to what the user sees: incremental text, stop strings, RequestOutput.

Incremental detokenization: decoding one token at a time is wrong (a multi-byte
character or a word piece may need the next token too), and decoding everything
every step is slow. We keep two offsets into the token list, as vLLM does:
prefix_offset..read_offset is text already emitted (decoded again only to give
the tokenizer context), read_offset.. is new. New text is emitted only once it no
longer ends in an incomplete character (U+FFFD).
"""
from __future__ import annotations

from folo_edu.outputs import CompletionOutput, RequestMetrics, RequestOutput
from folo_edu.request import Request
from folo_edu.sampling_params import RequestOutputKind

# How many tokens of context to decode before the new ones (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool,
                 stop: list[str], include_stop_str_in_output: bool):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.output_text = ""
        # Streamed text stops this many chars short of the end, since they could be
        # the start of a stop string that must not be shown.
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.emitted = 0  # chars of output_text already handed out as deltas

    def add_token(self, token_id: int) -> str | None:
        """Append one token; return the stop string if the text now contains one."""
        if self.tokenizer is None:
            return None
        self.token_ids.append(token_id)
        new_text = self._unread_text()
        if not new_text or new_text.endswith("\ufffd"):
            return None  # nothing complete yet: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        search_from = max(0, len(self.output_text) - self.holdback)
        self.output_text += new_text
        return self._find_stop(search_from)

    def flush(self) -> None:
        """At the end, emit any tail still waiting to become a complete character."""
        if self.tokenizer is None or self.read_offset == len(self.token_ids):
            return
        self.output_text += self._unread_text()
        self.read_offset = len(self.token_ids)

    def _unread_text(self) -> str:
        """Text of the tokens after read_offset, decoded with the context before them."""
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self.prefix_offset:self.read_offset],
                        skip_special_tokens=self.skip)
        full = decode(self.token_ids[self.prefix_offset:], skip_special_tokens=self.skip)
        return full[len(prefix):]

    def _find_stop(self, search_from: int) -> str | None:
        for s in self.stop:
            i = self.output_text.find(s, search_from)
            if i != -1:
                self.output_text = self.output_text[:i + (len(s) if self.include_stop else 0)]
                return s
        return None

    def take_delta(self, finished: bool) -> str:
        """The text not yet handed out (held back near the end unless finished)."""
        end = len(self.output_text) if finished else max(
            self.emitted, len(self.output_text) - self.holdback)
        delta = self.output_text[self.emitted:end]
        self.emitted = end
        return delta


class OutputProcessor:
    """Keeps one detokenizer per sequence and groups the n samples of a request."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.detok: dict[str, IncrementalDetokenizer] = {}
        self.sent_tokens: dict[str, int] = {}  # for DELTA outputs: token ids already sent

    def add_request(self, req: Request) -> None:
        p = req.sampling_params
        self.detok[req.request_id] = IncrementalDetokenizer(
            self.tokenizer, req.prompt_token_ids, p.skip_special_tokens, p.stop,
            p.include_stop_str_in_output)
        self.sent_tokens[req.request_id] = 0

    def process_token(self, req: Request) -> str | None:
        """Feed the request's newest token; return a stop string it hit, if any."""
        return self.detok[req.request_id].add_token(req.output_token_ids[-1])

    def completion(self, req: Request, index: int, kind: RequestOutputKind) -> CompletionOutput:
        detok = self.detok[req.request_id]
        finished = req.is_finished
        if finished and not isinstance(req.stop_reason, str):  # a stop string cut the text
            detok.flush()
        if kind == RequestOutputKind.DELTA:
            text = detok.take_delta(finished)
            sent = self.sent_tokens[req.request_id]
            token_ids = req.output_token_ids[sent:]
            logprobs = req.logprobs[sent:] if req.sampling_params.logprobs is not None else None
            self.sent_tokens[req.request_id] = req.num_output_tokens
        else:
            text = detok.output_text
            token_ids = list(req.output_token_ids)
            logprobs = list(req.logprobs) if req.sampling_params.logprobs is not None else None
        return CompletionOutput(
            index=index, text=text, token_ids=token_ids,
            cumulative_logprob=(req.cumulative_logprob
                                if req.sampling_params.logprobs is not None else None),
            logprobs=logprobs, finish_reason=req.status.finish_reason,
            stop_reason=req.stop_reason)

    def make_output(self, request_id: str, children: list[Request],
                    kind: RequestOutputKind) -> RequestOutput | None:
        """A RequestOutput for a user request made of its n child sequences."""
        finished = all(c.is_finished for c in children)
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        first = children[0]
        outputs = [self.completion(c, i, kind) for i, c in enumerate(children)]
        if finished:
            for c in children:
                self.detok.pop(c.request_id, None)
                self.sent_tokens.pop(c.request_id, None)
        metrics = RequestMetrics(first.arrival_time,
                                 min((c.first_token_time for c in children
                                      if c.first_token_time is not None), default=None),
                                 max((c.finished_time or 0 for c in children), default=None)
                                 if finished else None)
        return RequestOutput(request_id, first.prompt, first.prompt_token_ids, outputs,
                             finished, metrics, first.prompt_logprobs)
