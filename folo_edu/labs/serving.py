"""Checks for notebooks/10_serving.ipynb (serving).

The lab: the learner writes the client side of streaming, the server-sent-events (SSE)
parser every OpenAI client carries:

    sse_events(chunks) -> iterator of dict
      chunks: an iterable of bytes, as the socket hands them over (a read may end
              anywhere: inside a line, inside a UTF-8 character, between two events)
      yields: json.loads(data) of each event, in order, and stops at ``data: [DONE]``

The rules (the WHATWG ``text/event-stream`` format, the part a client needs): lines end
with ``\\n``, ``\\r\\n`` or ``\\r``; a blank line ends an event; an event's ``data:``
lines are joined with ``\\n`` (one space after the colon is dropped); lines starting
with ``:`` are comments, and other fields (``event:``, ``id:``) are ignored.

The check runs the learner's parser on hand-made byte streams (each one adds one of the
things a parser gets wrong), then, given a running server, on a real streamed
completion whose bytes are re-cut into small reads: its joined text must equal the
non-streamed completion at temperature 0. The reference is
``folo_edu.bench.serving.sse_events``, which the serving benchmark uses.
"""
from __future__ import annotations

import json

from folo_edu.bench.serving import sse_events as reference_sse_events
from folo_edu.labs import LabCheckFailed, not_answered, report_pass

WHAT = "sse_events (the server-sent-events parser)"

HINT_DONE = ("`data: [DONE]` is not JSON: it is the end of the stream. When an event's "
             "data is [DONE], stop (return) instead of calling json.loads")
HINT_UTF8 = ("a read can end inside a UTF-8 character (é is 2 bytes, 🙂 is 4): decoding "
             "each read on its own fails. Keep the bytes in a buffer and decode complete "
             "lines, or use codecs.getincrementaldecoder('utf-8')")
HINT_PARTIAL = ("a read can end in the middle of an event: keep what is left after the "
                "last complete line in a buffer, and add the next read to it")
HINT_SEVERAL = ("one read can hold several events: split the buffer into lines and end an "
                "event at every blank line, not once per read")
HINT_AFTER_DONE = "yield nothing after [DONE]: the stream is over there"
HINT_CRLF = ("lines may end with \\r\\n (or a lone \\r) as well as \\n: an event then ends "
             "with \\r\\n\\r\\n, which contains no \\n\\n")
HINT_COMMENT = ("lines starting with ':' are comments (servers send them as keep-alives) "
                "and fields other than data: (event:, id:) carry no JSON: skip them")
HINT_MULTILINE = ("an event ends at a blank line, not at every newline: one event can have "
                  "several data: lines, joined with \\n before json.loads")
HINT_NOSPACE = ("the space after 'data:' is optional: drop one leading space if there is "
                "one (line[6:] breaks on 'data:{...}')")


def _event(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _cut(data: bytes, sizes=(7,)) -> list[bytes]:
    """``data`` in reads of the given sizes, cycled."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i:i + n])
        i, k = i + n, k + 1
    return out


_TEXTS = [{"text": "Hello"}, {"text": ", café"}, {"text": " 🙂"}, {"text": "!", "end": True}]
_STREAM = ("".join(_event(o) for o in _TEXTS) + "data: [DONE]\n\n").encode()

# (name, reads, the hint for a wrong answer); each case adds one difficulty
CASES = [
    ("one event per read", [_event({"i": i}).encode() for i in range(3)]
     + [b"data: [DONE]\n\n"], HINT_DONE),
    ("several events in one read", [_STREAM], HINT_SEVERAL),
    ("reads of 7 bytes (cut inside events)", _cut(_STREAM.replace("é".encode(), b"e")
                                                  .replace("🙂".encode(), b":)")),
     HINT_PARTIAL),
    ("reads of 1, 2 and 5 bytes, cut inside é and 🙂", _cut(_STREAM, (1, 2, 5)), HINT_UTF8),
    ("data after [DONE]", [_event({"i": 0}).encode() + b"data: [DONE]\n\n"
                           + _event({"i": 1}).encode()], HINT_AFTER_DONE),
    ("\\r\\n line endings", [_STREAM.replace(b"\n", b"\r\n")], HINT_CRLF),
    ("a keep-alive comment and an event: field",
     [b": keep-alive\n\n", b"event: message\n" + _event({"i": 0}).encode(),
      b": ping\n\ndata: [DONE]\n\n"], HINT_COMMENT),
    ("one event with two data: lines",
     [b'data: {"text":\ndata:  "two lines"}\n\n', b"data: [DONE]\n\n"], HINT_MULTILINE),
    ("no space after data:", [b'data:{"i": 5}\n\n', b"data:[DONE]\n\n"], HINT_NOSPACE),
]


def _run(fn, reads, where: str, hint: str = "") -> list | None:
    """The learner's events as a list; None for the stub (it returned None). An
    exception becomes LabCheckFailed naming it, with ``hint``."""
    try:
        got = fn(iter(list(reads)))
        if got is None:
            return None
        return list(got)
    except LabCheckFailed:
        raise
    except UnicodeDecodeError as e:
        raise LabCheckFailed(f"{WHAT} ({where}): UnicodeDecodeError: {e.reason}. "
                             f"{HINT_UTF8}") from None
    except json.JSONDecodeError as e:
        if "[DONE]" in e.doc:
            raise LabCheckFailed(f"{WHAT} ({where}): json.loads got {e.doc.strip()!r}. "
                                 f"{HINT_DONE}") from None
        raise LabCheckFailed(f"{WHAT} ({where}): json.loads failed on {e.doc[:60]!r} "
                             f"({e.msg}). {hint}") from None
    except Exception as e:  # noqa: BLE001
        raise LabCheckFailed(f"{WHAT} ({where}): raised {type(e).__name__}: {e}. "
                             f"{hint}") from None


def _expected(reads) -> list:
    return list(reference_sse_events(iter(reads)))


def check_cases(fn) -> bool | None:
    """The hand-made cases: True when all pass, None for the stub; LabCheckFailed with
    the case's hint otherwise."""
    for name, reads, hint in CASES:
        got = _run(fn, reads, f"case: {name}", hint)
        if got is None:
            return None
        expected = _expected(reads)
        if got != expected:
            if len(got) > len(expected) and got[:len(expected)] == expected:
                hint = HINT_AFTER_DONE
            raise LabCheckFailed(f"{WHAT} (case: {name}): yielded {_short(got)}, expected "
                                 f"{_n(len(expected))}. {hint}")
    return True


def _n(count: int) -> str:
    return f"{count} event{'' if count == 1 else 's'}"


def _short(events: list) -> str:
    text = json.dumps(events, ensure_ascii=False)
    return f"{_n(len(events))} {text[:120]}{'...' if len(text) > 120 else ''}"


# ---- the live part: a real server's stream -------------------------------------------------
def stream_completion(fn, base_url: str, model: str, prompt: str, max_tokens: int,
                      read_sizes=(1, 3, 16, 64)) -> dict:
    """Stream a greedy completion from the server at ``base_url`` (…/v1) and parse it
    with ``fn``, its bytes re-cut into reads of ``read_sizes`` (cycled). Returns the
    events, the joined text, the finish reasons and the raw bytes."""
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    raw: list[bytes] = []
    with httpx.stream("POST", base_url + "/completions", json=body, timeout=120) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"POST {base_url}/completions: HTTP {resp.status_code}: "
                               f"{resp.read()[:200]!r}")

        def reads():
            for data in resp.iter_raw():
                raw.append(data)
                yield from _cut(data, read_sizes)

        events = _run(fn, reads(), "a real stream from the server")
    if events is None:
        return {"events": None}
    choices = [c for e in events for c in e.get("choices", [])]
    return {"events": events, "text": "".join(c.get("text") or "" for c in choices),
            "finish_reasons": [c["finish_reason"] for c in choices if c.get("finish_reason")],
            "usage": next((e["usage"] for e in events if e.get("usage")), None),
            "raw": b"".join(raw)}


def check_sse_events(fn, base_url: str | None = None, model: str | None = None,
                     prompt: str = "The three primary colors are", max_tokens: int = 8) -> bool:
    """Check ``fn(chunks) -> iterator of dict``: on the hand-made cases, then (with
    ``base_url``, e.g. ``http://127.0.0.1:8000/v1``, and the served ``model``) on a real
    streamed completion, cut into reads of 1 to 64 bytes, whose joined text must equal
    the non-streamed completion at temperature 0, with one finish_reason and the usage
    chunk."""
    if fn is None:
        return not_answered(WHAT)
    if not callable(fn):
        raise LabCheckFailed(f"{WHAT}: {fn!r} is not a function; pass the function itself")
    if check_cases(fn) is None:
        return not_answered(WHAT)
    if base_url is None:
        return report_pass(f"{WHAT} parses all {len(CASES)} hand-made streams")
    import httpx

    if model is None:
        model = httpx.get(base_url + "/models", timeout=30).json()["data"][0]["id"]
    live = stream_completion(fn, base_url, model, prompt, max_tokens)
    expected = list(reference_sse_events(iter([live["raw"]])))
    if live["events"] != expected:
        raise LabCheckFailed(f"{WHAT} (a real stream from the server): yielded "
                             f"{_short(live['events'])}, the stream holds {_n(len(expected))}. "
                             "Compare with the hand-made cases: this stream's reads "
                             "are 1 to 64 bytes long")
    whole = httpx.post(base_url + "/completions", timeout=120, json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).json()
    text = whole["choices"][0]["text"]
    if live["text"] != text:  # the parser is right, so this is the server's bug
        raise LabCheckFailed(f"{WHAT}: your events are right, but the streamed text "
                             f"{live['text']!r} differs from the non-streamed {text!r}: "
                             "report it, the server is wrong")
    if len(live["finish_reasons"]) != 1 or live["usage"] is None:
        raise LabCheckFailed(f"{WHAT}: expected one finish_reason and a usage chunk, got "
                             f"{live['finish_reasons']} and {live['usage']}: report it")
    return report_pass(
        f"{WHAT} parses all {len(CASES)} hand-made streams, and a real stream from the "
        f"server cut into reads of 1 to 64 bytes: {len(live['events'])} events, whose "
        f"{live['usage']['completion_tokens']} tokens join to the non-streamed text")


def stream_chat(fn, base_url: str, model: str, messages: list[dict], max_tokens: int = 32):
    """Stream a chat through ``fn`` (unchecked); yield (seconds since sending, text) for
    each chunk with content: what a chat UI does with a parser."""
    import time

    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=120) as resp:
        resp.raise_for_status()
        for event in fn(resp.iter_raw()):
            for c in event.get("choices", []):
                if c.get("delta", {}).get("content"):
                    yield time.perf_counter() - t0, c["delta"]["content"]
