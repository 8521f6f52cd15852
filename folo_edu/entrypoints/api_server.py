"""The OpenAI-compatible HTTP server: FastAPI routes over an AsyncEngine.

    GET  /health               200 while the engine thread runs, else 503
    GET  /metrics              Prometheus text, vLLM's metric names (metrics.py)
    GET  /v1/models            the one model served
    POST /v1/completions       prompt: str | [str] | [int] | [[int]]; stream: SSE
    POST /v1/chat/completions  messages through the tokenizer's chat template; stream

Response bodies have OpenAI's shapes (plus vLLM's ``stop_reason``); a client mistake
is an OpenAI-style error ``{"error": {"message", "type", "param", "code"}}`` with 400
(401 without the API key, 404 for an unknown model, 413 for a body over the limit,
429 when too many requests are unfinished), and never disturbs the other requests.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from folo_edu.entrypoints.async_engine import (AsyncEngine, EngineDeadError,
                                               TooManyRequestsError)
from folo_edu.entrypoints.metrics import ServerMetrics
from folo_edu.entrypoints.protocol import (BadRequest, ChatCompletionRequest,
                                           CompletionRequest, bad_request_from)
from folo_edu.outputs import CompletionOutput, RequestOutput

log = logging.getLogger("folo_edu.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024


def error_response(message: str, status: int = 400, param: str | None = None,
                   err_type: str | None = None) -> JSONResponse:
    err = BadRequest(message, param, status, err_type)
    return JSONResponse({"error": {"message": message, "type": err.err_type,
                                   "param": param, "code": status}}, status_code=status)


class _SSE(StreamingResponse):
    """Server-sent events whose generator is always closed when the response ends,
    also when the client went away: its ``finally`` aborts the engine requests."""

    def __init__(self, content):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _cancel_on_disconnect(request: Request, coro):
    """Run ``coro``; if the client disconnects first, cancel it (which aborts its
    engine requests) and return None."""
    task = asyncio.ensure_future(coro)

    async def disconnected():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # the client went away: closing its stream aborts its requests
    try:
        await task
    except asyncio.CancelledError:
        pass
    log.info("client disconnected; its request was aborted")
    return None


class OpenAIServer:
    """The routes' state: the engine front, the model's name, the metrics."""

    def __init__(self, front: AsyncEngine, model_name: str, metrics: ServerMetrics,
                 max_model_len: int):
        self.front = front
        self.model_name = model_name
        self.metrics = metrics
        self.max_model_len = max_model_len
        self.created = int(time.time())

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise BadRequest(f"model={model!r}: the model `{model}` does not exist; this "
                             f"server serves {self.model_name!r}", "model", 404)

    async def start(self, requests, arrival: float):
        """Add the requests to the engine; a bad one raises BadRequest naming the field."""
        try:
            return await self.front.add(requests, arrival)
        except TooManyRequestsError as e:
            raise BadRequest(str(e), None, 429) from e
        except (ValueError, TypeError) as e:
            raise bad_request_from(e) from e

    # ---- /v1/completions ------------------------------------------------------------
    async def completions(self, body: CompletionRequest, raw: Request):
        arrival = time.monotonic()
        self.check_model(body.model)
        body.check_unsupported()
        params = body.sampling_params(body.max_tokens, body.logprobs)
        prompts = body.prompts()
        rid = f"cmpl-{uuid.uuid4().hex}"
        stream = await self.start([(f"{rid}-{i}", p, params) for i, p in enumerate(prompts)],
                                  arrival)
        n, created = params.n, int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _SSE(self._stream_completion(stream, rid, created, n, include_usage))

        async def collect():
            finals: dict[int, RequestOutput] = {}
            async for i, out in stream:
                finals[i] = out
            return finals

        finals = await _cancel_on_disconnect(raw, collect())
        if finals is None:
            return Response(status_code=499)
        choices, completion_tokens = [], 0
        for i in range(len(prompts)):
            for c in finals[i].outputs:
                completion_tokens += len(c.token_ids)
                choices.append({
                    "index": i * n + c.index, "text": c.text,
                    "logprobs": _completion_logprobs(c, [0]) if params.logprobs is not None
                    else None,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})
        return {"id": rid, "object": "text_completion", "created": created,
                "model": self.model_name, "choices": choices,
                "usage": _usage(sum(len(finals[i].prompt_token_ids)
                                    for i in range(len(prompts))), completion_tokens)}

    async def _stream_completion(self, stream, rid, created, n,
                                 include_usage) -> AsyncIterator[str]:
        offsets: dict[int, list[int]] = {}  # choice index -> [text offset]
        prompt_tokens, completion_tokens = 0, 0
        try:
            async for i, out in stream:
                for c in out.outputs:
                    index = i * n + c.index
                    completion_tokens += len(c.token_ids)
                    if not c.text and not c.token_ids and c.finish_reason is None:
                        continue
                    logprobs = None
                    if c.logprobs is not None:
                        logprobs = _completion_logprobs(c, offsets.setdefault(index, [0]))
                    yield sse({"id": rid, "object": "text_completion", "created": created,
                               "model": self.model_name,
                               "choices": [{"index": index, "text": c.text,
                                            "logprobs": logprobs,
                                            "finish_reason": c.finish_reason,
                                            "stop_reason": c.stop_reason}]})
                if out.finished:
                    prompt_tokens += len(out.prompt_token_ids)
            if include_usage:
                yield sse({"id": rid, "object": "text_completion", "created": created,
                           "model": self.model_name, "choices": [],
                           "usage": _usage(prompt_tokens, completion_tokens)})
        except EngineDeadError as e:
            yield sse({"error": {"message": str(e), "type": "InternalServerError",
                                 "param": None, "code": 500}})
        yield "data: [DONE]\n\n"

    # ---- /v1/chat/completions --------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest, raw: Request):
        arrival = time.monotonic()
        self.check_model(body.model)
        params = body.sampling_params(body.effective_max_tokens(), body.num_logprobs())
        conversation = body.conversation()
        add_generation_prompt = body.add_generation_prompt

        def apply_template(engine):  # on the engine thread, which owns the tokenizer
            tok = engine.tokenizer
            if tok is None or not getattr(tok, "chat_template", None):
                raise BadRequest("messages: this model has no chat template; use "
                                 "/v1/completions", "messages")
            ids = tok.apply_chat_template(conversation, tokenize=True,
                                          add_generation_prompt=add_generation_prompt)
            if not isinstance(ids, list):  # newer transformers return a BatchEncoding
                ids = list(ids["input_ids"])
            return ids

        try:
            ids = await self.front.call(apply_template)
        except BadRequest:
            raise
        except Exception as e:  # noqa: BLE001  (a template that refuses the messages)
            raise BadRequest(f"messages: the chat template failed: {e}", "messages") from e
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        stream = await self.start([(rid, {"prompt_token_ids": ids}, params)], arrival)
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _SSE(self._stream_chat(stream, rid, created, params.n, include_usage,
                                          params.logprobs))

        async def collect():
            final = None
            async for _, out in stream:
                final = out
            return final

        final = await _cancel_on_disconnect(raw, collect())
        if final is None:
            return Response(status_code=499)
        choices = [{"index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": _chat_logprobs(c, params.logprobs) if params.logprobs is not None
                    else None,
                    "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
                   for c in final.outputs]
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": self.model_name, "choices": choices,
                "usage": _usage(len(final.prompt_token_ids),
                                sum(len(c.token_ids) for c in final.outputs))}

    async def _stream_chat(self, stream, rid, created, n, include_usage,
                           k: int | None) -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created,
                "model": self.model_name}
        prompt_tokens, completion_tokens = 0, 0
        try:
            for index in range(n):  # the role comes first, as OpenAI sends it
                yield sse({**head, "choices": [{"index": index,
                                                "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
            async for _, out in stream:
                for c in out.outputs:
                    completion_tokens += len(c.token_ids)
                    if not c.text and not c.token_ids and c.finish_reason is None:
                        continue
                    yield sse({**head, "choices": [{
                        "index": c.index,
                        "delta": {"content": c.text} if c.text or c.finish_reason is None
                        else {},
                        "logprobs": _chat_logprobs(c, k) if c.logprobs is not None else None,
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}]})
                if out.finished:
                    prompt_tokens = len(out.prompt_token_ids)
            if include_usage:
                yield sse({**head, "choices": [],
                           "usage": _usage(prompt_tokens, completion_tokens)})
        except EngineDeadError as e:
            yield sse({"error": {"message": str(e), "type": "InternalServerError",
                                 "param": None, "code": 500}})
        yield "data: [DONE]\n\n"

    # ---- the rest --------------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created,
            "owned_by": "folo_edu", "root": self.model_name, "parent": None,
            "max_model_len": self.max_model_len}]}

    async def render_metrics(self) -> bytes:
        stats = await self.front.call(lambda engine: engine.get_stats())
        return self.metrics.render(stats)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _ranked(position: dict) -> list[tuple[int, object]]:
    """(token id, Logprob) of one position, most likely first (rank 1 = argmax)."""
    return sorted(position.items(), key=lambda kv: (kv[1].rank or 0, -kv[1].logprob))


def _completion_logprobs(c: CompletionOutput, offset: list[int]) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset.

    ``offset`` holds the running text offset (a one-item list, so that a stream's
    chunks continue where the last one stopped)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, position in zip(c.token_ids, c.logprobs or []):
        chosen = position.get(token_id)
        text = (chosen.decoded_token if chosen is not None else None) or ""
        out["tokens"].append(text)
        out["token_logprobs"].append(chosen.logprob if chosen is not None else None)
        top = {}  # the top-k and the chosen token, as vLLM returns them
        for t, lp in _ranked(position):
            top.setdefault(lp.decoded_token or "", lp.logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset[0])
        offset[0] += len(text)
    return out


def _chat_logprobs(c: CompletionOutput, k: int) -> dict:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [k most
    likely]}]}."""
    content = []
    for token_id, position in zip(c.token_ids, c.logprobs or []):
        chosen = position.get(token_id)
        text = (chosen.decoded_token if chosen is not None else None) or ""
        tops = [{"token": lp.decoded_token or "", "logprob": lp.logprob,
                 "bytes": list((lp.decoded_token or "").encode())}
                for _, lp in _ranked(position)[:k]]
        content.append({"token": text, "logprob": chosen.logprob if chosen else None,
                        "bytes": list(text.encode()), "top_logprobs": tops})
    return {"content": content}


def build_app(front: AsyncEngine, model_name: str, metrics: ServerMetrics, *,
              api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app. ``front`` is shut down with the app (uvicorn's lifespan)."""
    from contextlib import asynccontextmanager

    server = OpenAIServer(front, model_name, metrics, front.engine.max_model_len)

    @asynccontextmanager
    async def lifespan(app):
        yield
        front.shutdown()
        log.info("engine thread stopped after %d steps", front.num_steps)

    app = FastAPI(title="folo_edu OpenAI-compatible server", lifespan=lifespan)
    app.state.server = server

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error_response(f"the request body has {length} bytes; at most "
                                  f"{max_body_bytes} are accepted", 413)
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response("Unauthorized: expected the header "
                                      "'Authorization: Bearer <api key>'", 401)
        return await call_next(request)

    @app.exception_handler(BadRequest)
    async def on_bad_request(request, exc: BadRequest):
        return error_response(str(exc), exc.status, exc.param, exc.err_type)

    @app.exception_handler(EngineDeadError)
    async def on_dead_engine(request, exc):
        return error_response(f"the engine is not running: {exc}", 503)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = loc[0] if loc else None
        where = ".".join(loc) or "body"
        kind = first.get("type", "")
        if kind == "json_invalid":
            message = f"the body is not valid JSON: {first.get('msg', '')}"
            param = None
        elif kind == "extra_forbidden":
            message = f"{where}: unsupported field"
        elif kind == "missing":
            message = f"{where}: field required"
        else:
            message = f"{where}={first.get('input')!r}: {first.get('msg', 'invalid')}"
        return error_response(message, 400, param)

    @app.get("/health")
    async def health():
        if not front.alive:
            return error_response(f"the engine is not running: {front.error!r}", 503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await server.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return server.models()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        return await server.completions(body, raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        return await server.chat(body, raw)

    return app


def make_server(engine, model_name: str, *, api_key: str | None = None,
                max_pending: int = 1024, max_body_bytes: int = MAX_BODY_BYTES):
    """(app, front): an AsyncEngine over ``engine`` (its thread starts now) and the app."""
    metrics = ServerMetrics(model_name)
    front = AsyncEngine(engine, max_pending=max_pending, on_step=metrics.on_step)
    return build_app(front, model_name, metrics, api_key=api_key,
                     max_body_bytes=max_body_bytes), front


def serve(engine, model_name: str, host: str = "127.0.0.1", port: int = 8000, *,
          api_key: str | None = None, max_pending: int = 1024, log_level: str = "info",
          sock=None) -> None:
    """Serve until SIGINT/SIGTERM. uvicorn handles both: it stops taking connections,
    lets the open ones finish (up to 5 s), the engine thread is stopped (its unfinished
    requests aborted), and then uvicorn raises the signal again, so the process ends
    the way a signalled process does (SIGINT: KeyboardInterrupt, exit code 130)."""
    import uvicorn

    if not log.handlers:  # our lines next to uvicorn's, in the same style
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(getattr(logging, log_level.upper(), logging.INFO))
        log.propagate = False
    app, _ = make_server(engine, model_name, api_key=api_key, max_pending=max_pending)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)
