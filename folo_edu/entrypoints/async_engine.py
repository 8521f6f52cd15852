"""AsyncEngine: an asyncio front over one LLMEngine, for the HTTP server.

The engine is plain synchronous code: ``add_request``, ``step``, ``abort_request``. A
server has many clients at once, each waiting on its own request. The front joins the
two worlds like this:

    event loop (HTTP handlers)               engine thread (owns the LLMEngine)
    ---------------------------               ----------------------------------
    add(...)  --- command queue --->          add_request / abort_request / call
                                              step() while anything is unfinished
    per-request asyncio.Queue  <--- call_soon_threadsafe(put_nowait, output)

Only the engine thread ever touches the engine (and its tokenizer), so the engine
needs no locks. A command that can fail (``add_request`` validates the prompt and the
parameters) answers through a concurrent Future, so a bad request raises in its own
handler and never reaches the step loop: the other requests do not notice it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass

from folo_edu.engine.llm_engine import EngineStepError, LLMEngine
from folo_edu.outputs import RequestOutput
from folo_edu.sampling_params import RequestOutputKind, SamplingParams

log = logging.getLogger("folo_edu.serve")


class EngineDeadError(RuntimeError):
    """The engine thread stopped (a bug, or shutdown): no request can be served."""


class TooManyRequestsError(RuntimeError):
    """More unfinished requests than the front accepts (max_pending)."""


@dataclass
class _Stream:
    """Where the outputs of one engine request go."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    tag: object  # handed back with every output (e.g. the prompt's index)
    kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    tokens_seen: int = 0  # generated tokens already counted (for on_step)

    def new_tokens(self, out: RequestOutput) -> int:
        """How many tokens this output adds, whatever its output kind."""
        if self.kind == RequestOutputKind.FINAL_ONLY and not out.finished:
            return 0
        n = sum(len(c.token_ids) for c in out.outputs)
        if self.kind == RequestOutputKind.DELTA:
            return n
        # CUMULATIVE (and the one FINAL_ONLY output) carry every token so far
        added, self.tokens_seen = n - self.tokens_seen, n
        return added


_DONE = object()  # the last item of a stream after its final output


class AsyncEngine:
    """Serve one LLMEngine to many asyncio clients from a background thread.

    ``on_step(deliveries, step_seconds)`` (optional) is called on the engine thread
    after every step with ``[(RequestOutput, new generated tokens), ...]``: the
    metrics hook.
    """

    def __init__(self, engine: LLMEngine, max_pending: int = 1024,
                 on_step: Callable | None = None, idle_poll_s: float = 0.5):
        self.engine = engine
        self.max_pending = max_pending
        self.on_step = on_step
        self.idle_poll_s = idle_poll_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # engine request id -> stream (engine thread)
        self._pending = 0  # requests accepted and not finished (event loop side)
        self._ids = itertools.count()
        self._stop = threading.Event()
        self.error: BaseException | None = None  # why the engine thread died, if it did
        self.num_steps = 0
        self._thread = threading.Thread(target=self._run, name="folo-edu-engine", daemon=True)
        self._thread.start()

    # ---- the event-loop side ------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def new_id(self, prefix: str = "req") -> str:
        return f"{prefix}-{next(self._ids)}"

    async def call(self, fn: Callable[[LLMEngine], object]):
        """Run ``fn(engine)`` on the engine thread (e.g. tokenizing) and return its result."""
        fut: Future = Future()
        self._send(("call", fn, fut))
        return await self._answer(fut)

    async def add(self, requests: list[tuple[str, object, SamplingParams]],
                  arrival_time: float | None = None) -> "RequestStream":
        """Queue several requests ``(request_id, prompt, params)`` as one group.

        Raises ValueError/TypeError (from LLMEngine.add_request) if one is invalid; then
        none of them was added. Iterate the returned stream for ``(index, output)``
        pairs; close it to abort whatever has not finished.
        """
        if not self.alive:
            raise EngineDeadError(f"the engine is not running ({self.error!r})")
        if self._pending + len(requests) > self.max_pending:
            raise TooManyRequestsError(
                f"the server already has {self._pending} unfinished requests; at most "
                f"{self.max_pending} are accepted (max_pending): retry later")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        fut: Future = Future()
        streams = {rid: _Stream(loop, q, i, p.output_kind)
                   for i, (rid, _, p) in enumerate(requests)}
        self._send(("add", requests, streams, arrival, fut))
        try:
            await self._answer(fut)  # raises the validation error; then nothing was added
        except asyncio.CancelledError:  # the client left before the engine answered
            self._commands.put(("abort", list(streams)))
            raise
        self._pending += len(requests)
        return RequestStream(self, q, {rid: st.tag for rid, st in streams.items()})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread: unfinished requests are aborted, their clients told."""
        self._stop.set()
        self._commands.put(("wake",))
        self._thread.join(timeout)

    async def _answer(self, fut: Future):
        """Wait for the engine thread to answer a command (or to die)."""
        wrapped = asyncio.wrap_future(fut)
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=1.0)
            if done:
                return wrapped.result()
            if not self.alive:
                wrapped.cancel()
                raise EngineDeadError(f"the engine is not running ({self.error!r})")

    def _send(self, command: tuple) -> None:
        if not self.alive:
            raise EngineDeadError(f"the engine is not running ({self.error!r})")
        self._commands.put(command)

    # ---- the engine thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # Idle: sleep on the command queue. Busy: take what arrived, then step.
                block = not self.engine.has_unfinished_requests()
                self._drain(block)
                if self._stop.is_set():
                    break
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as e:  # a bug: every waiting client gets the error
            log.exception("the engine thread failed")
            self.error = e
        finally:
            self._close_all(self.error or EngineDeadError("the server is shutting down"))

    def _drain(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=self.idle_poll_s) if block \
                else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, requests, streams, arrival, fut = command
            added = []
            try:
                for rid, prompt, params in requests:
                    self.engine.add_request(rid, prompt, params, arrival_time=arrival)
                    added.append(rid)
            except Exception as e:  # a bad request: undo its siblings, tell its handler
                if added:
                    self.engine.abort_request(added)
                fut.set_exception(e)
                return
            self._streams.update(streams)
            fut.set_result(None)
        elif kind == "abort":
            ids = [r for r in command[1] if r in self._streams]
            for rid in ids:
                self._streams.pop(rid)
            for rid in ids:
                try:
                    self.engine.abort_request(rid)
                except KeyError:  # it finished in the same step
                    pass
        elif kind == "call":
            _, fn, fut = command
            try:
                fut.set_result(fn(self.engine))
            except Exception as e:
                fut.set_exception(e)

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            outputs = self.engine.step()
        except EngineStepError as e:  # the failed requests end with finish_reason "error"
            log.error("%s", e)
            outputs = e.outputs
        seconds = time.perf_counter() - t0
        self.num_steps += 1
        deliveries = []
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:  # aborted by its client meanwhile
                continue
            deliveries.append((out, stream.new_tokens(out)))
            self._deliver(stream, (out.request_id, out))
            if out.finished:
                del self._streams[out.request_id]
                self._deliver(stream, (out.request_id, _DONE))
        if self.on_step is not None:
            try:
                self.on_step(deliveries, seconds)
            except Exception:  # metrics must never stop serving
                log.exception("the on_step hook failed")

    @staticmethod
    def _deliver(stream: _Stream, item) -> None:
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        except RuntimeError:  # its event loop is closed: nobody is listening any more
            pass

    def _close_all(self, error: BaseException) -> None:
        """On the way out: every waiting client and every unanswered command gets the
        error, and every unfinished request is aborted (its blocks freed)."""
        for rid, stream in list(self._streams.items()):
            self._deliver(stream, error)
            try:
                self.engine.abort_request(rid)
            except Exception:  # noqa: BLE001  (finished, or the engine is broken)
                pass
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            fut = command[-1]
            if isinstance(fut, Future) and not fut.done():
                fut.set_exception(error)


class RequestStream:
    """The outputs of one group of requests, as ``async for index, output in stream``.

    ``close()`` (also called when the iteration ends early, e.g. cancelled because the
    client went away) aborts the requests that have not finished.
    """

    def __init__(self, front: AsyncEngine, q: asyncio.Queue, tags: dict[str, object]):
        self._front, self._queue, self._tags = front, q, tags
        self.unfinished = set(tags)

    async def __aiter__(self) -> AsyncIterator[tuple[object, RequestOutput]]:
        try:
            while self.unfinished:
                item = await self._queue.get()
                if isinstance(item, BaseException):  # the engine thread stopped
                    raise item
                rid, out = item
                if out is _DONE:
                    self.unfinished.discard(rid)
                    self._front._pending -= 1
                    continue
                yield self._tags[rid], out
        finally:
            self.close()

    def close(self) -> None:
        if not self.unfinished:
            return
        left, self.unfinished = list(self.unfinished), set()
        self._front._pending -= len(left)
        if self._front.alive:
            self._front._commands.put(("abort", left))
