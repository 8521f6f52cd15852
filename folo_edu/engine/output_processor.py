"""From token ids to what the user sees: one detokenizer per sequence, RequestOutput.

The text itself is built by IncrementalDetokenizer (engine/detokenizer.py).
"""
from __future__ import annotations

from folo_edu.engine.detokenizer import IncrementalDetokenizer
from folo_edu.outputs import CompletionOutput, RequestMetrics, RequestOutput
from folo_edu.request import Request, RequestStatus
from folo_edu.sampling_params import RequestOutputKind


class OutputProcessor:
    """Keeps one detokenizer per sequence and groups the n samples of a request."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.detok: dict[str, IncrementalDetokenizer] = {}
        self.sent_tokens: dict[str, int] = {}  # for DELTA outputs: token ids already sent

    def add_request(self, req: Request) -> None:
        self.detok[req.request_id] = IncrementalDetokenizer(
            self.tokenizer, req.prompt_token_ids, req.sampling_params)
        self.sent_tokens[req.request_id] = 0

    def process_token(self, req: Request) -> str | None:
        """Feed the request's newest token; return a stop string it hit, if any."""
        # Finished by EOS or a stop token id on this token: its text is left out.
        stop_terminated = (req.status.finish_reason == "stop"
                           and (req.stop_reason is None or isinstance(req.stop_reason, int)))
        return self.detok[req.request_id].update(req.output_token_ids[-1], stop_terminated)

    def completion(self, req: Request, index: int, kind: RequestOutputKind) -> CompletionOutput:
        detok = self.detok[req.request_id]
        finished = req.is_finished
        # At the end, emit a held tail, unless a stop string cut the text or the
        # detokenizer itself failed (error).
        if finished and not isinstance(req.stop_reason, str) and \
                req.status != RequestStatus.FINISHED_ERROR:
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
            logprobs=logprobs,
            # A stop string found on the last allowed token still says "stop" (vLLM).
            finish_reason=("stop" if isinstance(req.stop_reason, str) and finished
                           and req.status != RequestStatus.FINISHED_ERROR
                           else req.status.finish_reason),
            stop_reason=req.stop_reason)

    def make_output(self, request_id: str, children: list[Request], kind: RequestOutputKind,
                    changed: list[Request] | None = None) -> RequestOutput | None:
        """A RequestOutput for a user request made of its n child sequences.

        DELTA outputs carry only the completions in ``changed`` (those that got a token
        this step), as vLLM does; the others carry all n.
        """
        finished = all(c.is_finished for c in children)
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        first = children[0]
        shown = [(i, c) for i, c in enumerate(children)
                 if kind != RequestOutputKind.DELTA or changed is None or c in changed]
        outputs = [self.completion(c, i, kind) for i, c in shown]
        if finished:
            for c in children:
                self.detok.pop(c.request_id, None)
                self.sent_tokens.pop(c.request_id, None)
        metrics = RequestMetrics(
            first.arrival_time,
            min((c.first_token_time for c in children if c.first_token_time is not None),
                default=None),
            max((c.finished_time or 0 for c in children), default=None) if finished else None,
            min((c.first_scheduled_time for c in children
                 if c.first_scheduled_time is not None), default=None),
            max((c.token_times[-1] for c in children if c.token_times), default=None),
            list(first.token_times))
        return RequestOutput(request_id, first.prompt, first.prompt_token_ids, outputs,
                             finished, metrics, first.prompt_logprobs,
                             num_cached_tokens=first.num_cached_tokens)
