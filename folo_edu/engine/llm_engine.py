"""LLMEngine: add requests, step, get outputs. The loop every server is built on.

    add_request  tokenize and validate; a bad request is refused before it touches
                 any state, so the requests already running never notice it
    step         schedule -> run the model once -> update requests -> outputs
    abort        a request leaves at once and its KV blocks are freed
"""
from __future__ import annotations

import time
from collections import deque

from folo_edu.attention import require_available
from folo_edu.config import EngineConfig
from folo_edu.engine.model_runner import ModelRunner
from folo_edu.engine.output_processor import OutputProcessor
from folo_edu.engine.scheduler import Scheduler
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.models.loader import eos_token_ids, resolve_config
from folo_edu.outputs import Logprob, RequestOutput
from folo_edu.request import Request, RequestStatus
from folo_edu.sampling_params import RequestOutputKind, SamplingParams


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"model={path!r}: no tokenizer could be loaded ({type(e).__name__}); "
                         "pass skip_tokenizer_init=True to run on token ids only") from e


def percentiles(values, points=(50, 90, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p90": ..., "p99": ...} by linear interpolation; None without data."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        if not ordered:
            out[f"p{p}"] = None
            continue
        x = (len(ordered) - 1) * p / 100
        lo = int(x)
        hi = min(lo + 1, len(ordered) - 1)
        out[f"p{p}"] = ordered[lo] + (ordered[hi] - ordered[lo]) * (x - lo)
    return out


class EngineStepError(RuntimeError):
    """A step failed; the requests it hit finished with finish_reason "error".

    ``outputs``: every RequestOutput the step produced (the failed requests' final ones
    included); ``request_ids``: the sequences that failed. The engine stays usable.
    """

    def __init__(self, message: str, outputs: list[RequestOutput], request_ids: list[str]):
        super().__init__(message)
        self.outputs = outputs
        self.request_ids = request_ids


class LLMEngine:
    """The engine behind LLM. Use it directly to interleave requests and steps."""

    def __init__(self, config: EngineConfig):
        require_available(config.attention_backend)
        self.config = resolve_config(config)  # finds (maybe converts) the checkpoint
        mc = config.model_config
        self.tokenizer = None if mc.skip_tokenizer_init else load_tokenizer(mc.path)
        self.eos_token_ids = eos_token_ids(mc.path, mc.hf_config, self.tokenizer)
        self.vocab_size = mc.hf_config.vocab_size
        self.max_model_len = mc.max_model_len
        self.kv_manager = KVCacheManager(config.cache_config.num_kv_blocks,
                                         config.tokens_per_block,
                                         config.cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_manager, mc.max_model_len)
        self.model_runner = ModelRunner(config)
        self.output_processor = OutputProcessor(self.tokenizer)
        # user request id -> (its child sequence requests, output kind)
        self._groups: dict[str, tuple[list[Request], RequestOutputKind]] = {}
        self._parent_of: dict[str, str] = {}
        self._last_step_tokens = 0
        self._ttfts: deque[float] = deque(maxlen=10_000)  # seconds, finished requests
        self._itls: deque[float] = deque(maxlen=10_000)
        # (request id, tokens, "prefill" | "decode") for each request of the last step,
        # for timelines and teaching; the engine itself never reads it.
        self.last_step: list[tuple[str, int, str]] = []

    @classmethod
    def from_kwargs(cls, model=None, **kwargs) -> "LLMEngine":
        return cls(EngineConfig.from_kwargs(model, **kwargs))

    # ---- requests --------------------------------------------------------------------
    def add_request(self, request_id: str, prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> None:
        """Queue a request. prompt: a str, or {"prompt_token_ids": [...]}.

        Raises ValueError/TypeError (and changes nothing) for a bad id, prompt or params.
        """
        if not isinstance(request_id, str) or not request_id:
            raise TypeError(f"request_id={request_id!r}: expected a non-empty str")
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params={params!r}: expected a SamplingParams")
        # A request with n > 1 runs as n sequences "<id>#0", "<id>#1", ...; no id, the
        # user's or a child's, may be in use by another unfinished request.
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}"
                                                        for i in range(params.n)]
        taken = [r for r in {request_id, *child_ids}
                 if r in self._groups or r in self.scheduler.requests]
        if taken:
            raise ValueError(f"request_id={request_id!r}: {taken[0]!r} is already running (an "
                             "unfinished request uses it; a request with n>1 uses "
                             "'<id>#<i>' for its samples); expected a new id")
        text, token_ids = self._tokenize(prompt)
        max_tokens = self._check_lengths(token_ids, params)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        children = []
        for i in range(params.n):
            child_params = params.clone(
                n=1, max_tokens=max_tokens,
                seed=None if params.seed is None else params.seed + i)
            if not params.ignore_eos:
                child_params.all_stop_token_ids |= self.eos_token_ids
            child = Request(child_ids[i], token_ids, child_params, arrival, self.eos_token_ids, text)
            if params.prompt_logprobs is not None:
                child.prompt_logprobs = [None]
            children.append(child)
        for child in children:
            self.scheduler.add_request(child)
            self.output_processor.add_request(child)
            self._parent_of[child.request_id] = request_id
        self._groups[request_id] = (children, params.output_kind)

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is a str but the engine has no tokenizer "
                                 "(skip_tokenizer_init=True); expected "
                                 "{'prompt_token_ids': [...]}")
            text, ids = prompt, self.tokenizer.encode(prompt, add_special_tokens=True)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            text, ids = prompt.get("prompt"), prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise TypeError(f"prompt_token_ids={ids!r}: expected a list of ints")
            ids = list(ids)
        else:
            raise TypeError(f"prompt={prompt!r}: expected a str or a dict with "
                            "'prompt_token_ids'")
        if not ids:
            raise ValueError(f"prompt={prompt!r}: it has 0 tokens; expected at least 1")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids: token id {bad[0]} is outside the "
                             f"vocabulary; expected ids in [0, {self.vocab_size})")
        return text, ids

    def _check_lengths(self, ids: list[int], params: SamplingParams) -> int:
        """Check the request can ever finish; return its effective max_tokens."""
        room = self.max_model_len - len(ids)
        if room < 1:
            raise ValueError(f"prompt has {len(ids)} tokens; expected at most "
                             f"max_model_len - 1 = {self.max_model_len - 1}, so that at least "
                             "one token can be generated")
        max_tokens = room if params.max_tokens is None else params.max_tokens
        if params.min_tokens > room:
            raise ValueError(f"SamplingParams.min_tokens={params.min_tokens}: the prompt has "
                             f"{len(ids)} tokens, so at most {room} more fit in "
                             f"max_model_len={self.max_model_len}")
        if max_tokens > room:
            raise ValueError(f"SamplingParams.max_tokens={params.max_tokens}: the prompt has "
                             f"{len(ids)} tokens, so at most {room} more fit in "
                             f"max_model_len={self.max_model_len}")
        need = self.kv_manager.blocks_needed(len(ids) + max_tokens)
        if need > self.kv_manager.num_blocks:
            raise ValueError(f"request needs {need} KV blocks for {len(ids)} prompt + "
                             f"{max_tokens} output tokens, but the cache has only "
                             f"{self.kv_manager.num_blocks}; expected a shorter request or a "
                             "bigger cache (num_kv_blocks / kv_cache_memory_bytes)")
        return max_tokens

    def abort_request(self, request_id: str | list[str]) -> None:
        """Stop request(s) now and free their KV blocks. Unknown ids raise KeyError."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        unknown = [r for r in ids if r not in self._groups]
        if unknown:
            raise KeyError(f"request_id={unknown[0]!r}: no such unfinished request")
        for rid in ids:
            children, _ = self._groups.pop(rid)
            for child in children:
                self._parent_of.pop(child.request_id, None)
                if not child.is_finished:
                    self.scheduler.finish_request(child.request_id,
                                                  RequestStatus.FINISHED_ABORTED)
                self.output_processor.detok.pop(child.request_id, None)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix block. Like vLLM, refused (returns False, nothing
        changed) while any request holds blocks; True once the cache is empty."""
        return self.kv_manager.reset_prefix_cache()

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups)

    # ---- the loop --------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduling step and return the outputs it produced.

        If something fails inside the step (the model, the sampler, the detokenizer),
        the requests it hit finish with finish_reason "error" and free their blocks, the
        others carry on untouched, and EngineStepError is raised with every output of the
        step attached (``.outputs``), so a serving loop can deliver them and go on.
        """
        sched = self.scheduler.schedule()
        self._last_step_tokens = sched.num_batched_tokens
        self.last_step = [(s.request_id, s.num_new_tokens,
                           "decode" if s.start >= len(s.prompt_token_ids) else "prefill")
                          for s in sched.scheduled]
        try:
            result = self.model_runner.execute(sched)
        except Exception as e:  # nothing was applied: fail the step's requests, keep the rest
            failed = [self.scheduler.requests[s.request_id] for s in sched.scheduled
                      if s.request_id in self.scheduler.requests]
            outputs = self._finish_with_error(failed)
            raise EngineStepError(f"the model step failed ({type(e).__name__}: {e}); its "
                                  f"{len(failed)} requests finished with an error", outputs,
                                  [r.request_id for r in failed]) from e
        self._apply_logprobs(result)
        updated = self.scheduler.update_from_output(
            sched, {rid: t.token_id for rid, t in result.sampled.items()})
        touched: dict[str, list[Request]] = {}
        failed, error = [], None
        for req in updated:
            try:
                stop = self.output_processor.process_token(req)
            except Exception as e:  # this request's text is broken; the others go on
                failed.append(req)
                error = error or e
                continue
            if stop is not None:  # a stop string wins over "length", as in vLLM
                req.stop_reason = stop
                if not req.is_finished:
                    self.scheduler.finish_request(req.request_id, RequestStatus.FINISHED_STOPPED)
            touched.setdefault(self._parent_of[req.request_id], []).append(req)
        outputs = self._outputs(touched)
        if failed:
            outputs += self._finish_with_error(failed)
            ids = [r.request_id for r in failed]
            raise EngineStepError(f"detokenizing failed ({type(error).__name__}: {error}) for "
                                  f"{ids}; they finished with an error", outputs, ids) from error
        return outputs

    def _apply_logprobs(self, result) -> None:
        """Store the runner's logprobs on their requests, as vLLM's Logprob objects."""
        for rid, positions in result.prompt_logprobs.items():
            self.scheduler.requests[rid].prompt_logprobs.extend(
                self._logprobs(ranked) for ranked in positions)
        for rid, tok in result.sampled.items():
            req = self.scheduler.requests[rid]
            if req.sampling_params.logprobs is not None:
                req.logprobs.append(self._logprobs(tok.top_logprobs))
                req.cumulative_logprob += tok.logprob

    def _logprobs(self, ranked) -> dict[int, Logprob]:
        decode = self.tokenizer.decode if self.tokenizer is not None else None
        return {t: Logprob(lp, rank, decode([t]) if decode else None)
                for t, (lp, rank) in ranked.items()}

    def _outputs(self, touched: dict[str, list[Request]]) -> list[RequestOutput]:
        """One RequestOutput per user request that changed; forget the finished ones."""
        outputs = []
        for parent, changed in touched.items():
            children, kind = self._groups[parent]
            out = self.output_processor.make_output(parent, children, kind, changed)
            if out is not None:
                outputs.append(out)
            if all(c.is_finished for c in children):
                del self._groups[parent]
                for c in children:
                    self._parent_of.pop(c.request_id, None)
                    self._record_latency(c)
        return outputs

    def _record_latency(self, req: Request) -> None:
        """Keep a finished sequence's TTFT and ITLs for get_stats() (the last 10,000)."""
        if req.first_token_time is not None:
            self._ttfts.append(req.first_token_time - req.arrival_time)
        times = req.token_times
        self._itls.extend(b - a for a, b in zip(times, times[1:]))

    def _finish_with_error(self, requests: list[Request]) -> list[RequestOutput]:
        """Mark these sequences FINISHED_ERROR (freeing their blocks); return the final
        outputs of their user requests."""
        touched: dict[str, list[Request]] = {}
        for req in requests:
            if req.is_finished:  # finished this very step, but its output failed
                req.transition(RequestStatus.FINISHED_ERROR)
            else:
                self.scheduler.finish_request(req.request_id, RequestStatus.FINISHED_ERROR)
            touched.setdefault(self._parent_of[req.request_id], []).append(req)
        return self._outputs(touched)

    def get_stats(self) -> dict:
        """Plain numbers about the engine right now (the plots and tests read these).

        ttft_p50_s ... itl_p99_s: percentiles over the last 10,000 finished sequences'
        time to first token and inter-token latencies (None before any finished)."""
        kv = self.kv_manager
        return {
            "kv_blocks_total": kv.num_blocks,
            "kv_blocks_free": kv.num_free_blocks,
            "kv_blocks_used": kv.num_blocks - kv.num_free_blocks,
            "kv_block_size": kv.block_size,
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_preemptions": self.scheduler.num_preemptions,
            "num_batched_tokens_last_step": self._last_step_tokens,
            "prefix_cache_queries": kv.prefix_cache_queries,
            "prefix_cache_hits": kv.prefix_cache_hits,
            "prefix_cache_hit_rate": (kv.prefix_cache_hits / kv.prefix_cache_queries
                                      if kv.prefix_cache_queries else 0.0),
            "prefix_cache_evictions": kv.pool.num_evictions,
            **{f"ttft_{name}_s": value for name, value in percentiles(self._ttfts).items()},
            **{f"itl_{name}_s": value for name, value in percentiles(self._itls).items()},
        }
