"""Notebook 10 (serving): the SSE-parser lab accepts a right parser, says "not answered"
for None and the stub, and names each common bug; the package's SSEDecoder (which the
serving benchmark uses) keeps events whole however the bytes are cut."""
from __future__ import annotations

import codecs
import json
import random
import re

import pytest

from folo_edu.bench.serving import SSEDecoder, poisson_offsets, sse_events
from folo_edu.labs import LabCheckFailed
from folo_edu.labs import serving as lab


def parser(bug=None):
    """A learner's sse_events, with one of the common bugs switched on."""
    def sse(chunks):
        utf8 = codecs.getincrementaldecoder("utf-8")()
        buffer, data = "", []
        for chunk in chunks:
            if bug == "decode_each_read":
                buffer += chunk.decode()
            else:
                buffer += utf8.decode(chunk)
            if bug != "only_newline":
                buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
            *lines, rest = buffer.split("\n")
            buffer = "" if bug == "no_buffer" else rest
            for line in lines:
                if bug == "line_is_event" and line.startswith("data"):
                    data = [line[6:]]
                    line = ""
                if line == "":
                    if data:
                        text = "\n".join(data)
                        if text == "[DONE]" and bug != "no_done":
                            if bug == "skip_done":
                                data = []
                                continue
                            return
                        yield json.loads(text)
                    data = []
                elif bug == "data_slice" and line.startswith("data"):
                    data.append(line[6:])
                elif line.startswith("data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(" ") else value)
                elif bug == "comments_as_data":
                    data.append(line)
    return sse


def test_the_reference_and_a_right_parser_pass(capsys):
    assert lab.check_sse_events(lab.reference_sse_events) is True
    assert lab.check_sse_events(parser()) is True
    assert "Correct" in capsys.readouterr().out


def test_none_and_the_stub_are_not_answered(capsys):
    assert lab.check_sse_events(None) is False
    assert "Not answered yet" in capsys.readouterr().out

    def stub(chunks):
        ...  # your code here

    assert lab.check_sse_events(stub) is False
    assert "Not answered yet" in capsys.readouterr().out


@pytest.mark.parametrize("bug, hint", [
    ("no_done", "is not JSON"),
    ("no_buffer", "in the middle of an event"),
    ("decode_each_read", "inside a UTF-8 character"),
    ("skip_done", re.escape("nothing after [DONE]")),
    ("only_newline", r"\\r\\n"),
    ("comments_as_data", "comments"),
    ("line_is_event", "several data: lines"),
    ("data_slice", "space after 'data:' is optional"),
])
def test_each_bug_gets_its_hint(bug, hint):
    with pytest.raises(LabCheckFailed, match=hint):
        lab.check_sse_events(parser(bug))


def test_not_a_function_is_refused():
    with pytest.raises(LabCheckFailed, match="not a function"):
        lab.check_sse_events("data: {}")


def test_decoder_keeps_events_whole_however_the_bytes_are_cut():
    events = [{"i": i, "text": "é🙂\n" * (i % 3)} for i in range(20)]
    stream = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    raw = (": hello\n\n" + stream + "data: [DONE]\n\n").encode()
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), 30))
        reads = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
        assert list(sse_events(reads)) == events
    # a CRLF cut between its \r and \n is still one line ending
    dec = SSEDecoder()
    assert dec.feed(b"data: 1\r") == [] and dec.feed(b"\n") == [] and dec.feed(b"\r\n") == ["1"]
    with pytest.raises(ValueError, match=r"without data: \[DONE\]"):
        list(sse_events([b"data: {}\n\n"]))


def test_poisson_offsets_have_the_rate_and_are_seeded():
    offsets = poisson_offsets(4000, 2.0, random.Random(1))
    assert offsets[0] == 0 and offsets == sorted(offsets)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert abs(sum(gaps) / len(gaps) - 0.5) < 0.03  # mean gap 1/rate
    assert offsets == poisson_offsets(4000, 2.0, random.Random(1))
    assert poisson_offsets(3, float("inf"), random.Random(0)) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rate=0"):
        poisson_offsets(3, 0, random.Random(0))
