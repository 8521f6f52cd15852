"""IncrementalDetokenizer with the default model's real (byte-level BPE) tokenizer.

The stop-string rules are vLLM v1's (vllm/v1/engine/detokenizer.py, listed in the
module docstring of folo_edu/engine/detokenizer.py); each table row is one rule.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from folo_edu import SamplingParams
from folo_edu.engine.detokenizer import IncrementalDetokenizer

TEXT = "Hello world, the END is near."  # Hello| world|,| the| END| is| near|.
PROMPT = "The capital of France is"
MULTIBYTE = "猫は可愛い 🥞☕ crêpes"  # CJK and emoji: several byte-level tokens per char


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from folo_edu import download_model

    return AutoTokenizer.from_pretrained(download_model(quiet=True))


def ids_of(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def run(tok, output_ids, prompt_ids=(), last_stop_terminated=False, **params):
    """Feed tokens one at a time as the engine does; return (detok, stop, deltas).

    Stops at the first stop string; the last token is fed with stop_terminated when
    asked. Deltas are taken after every token, then once more as finished.
    """
    detok = IncrementalDetokenizer(tok, list(prompt_ids), SamplingParams(**params))
    stop, deltas = None, []
    for i, t in enumerate(output_ids):
        stop = detok.update(t, last_stop_terminated and i == len(output_ids) - 1)
        if stop is not None:
            break
        deltas.append(detok.take_delta(finished=False))
    if stop is None:
        detok.flush()
    deltas.append(detok.take_delta(finished=True))
    return detok, stop, deltas


def check_deltas(deltas, final):
    """DELTA mode: deltas add up to the final text, and none shows text later cut."""
    assert "".join(deltas) == final
    shown = ""
    for d in deltas:
        shown += d
        assert final.startswith(shown)


# ---- stop strings ----------------------------------------------------------------------
# (stop, include_stop_str_in_output, min_tokens, expected text, expected stop string)
STOP_CASES = [
    # One token holds the whole stop string.
    pytest.param([" END"], False, 0, "Hello world, the", " END", id="one-token"),
    pytest.param([" END"], True, 0, "Hello world, the END", " END", id="one-token-include"),
    # Spans three tokens, starts and ends inside a token: the rest of that token goes.
    pytest.param(["d, th"], False, 0, "Hello worl", "d, th", id="spans-tokens"),
    pytest.param(["d, th"], True, 0, "Hello world, th", "d, th", id="spans-tokens-include"),
    # In the middle of one token's text (" world"): cut inside the token.
    pytest.param(["or"], False, 0, "Hello w", "or", id="mid-token"),
    pytest.param(["or"], True, 0, "Hello wor", "or", id="mid-token-include"),
    # Several stop strings: the one that appears first in the text ends it...
    pytest.param(["near", " END"], False, 0, "Hello world, the", " END", id="first-in-text"),
    # ...but two found in the same new text: the first in the *list* wins (vLLM),
    # even though "or" starts before "d".
    pytest.param(["d", "or"], False, 0, "Hello worl", "d", id="same-step-list-order"),
    pytest.param(["or", "d"], False, 0, "Hello w", "or", id="same-step-list-order-2"),
    # Not there at all: the whole text.
    pytest.param(["xyz"], False, 0, TEXT, None, id="absent"),
    # min_tokens: stop strings are looked for only once len(output) > min_tokens.
    pytest.param(["Hello"], False, 0, "", "Hello", id="min0-first-token"),
    pytest.param(["Hello"], False, 1, TEXT, None, id="min1-text-before-min-never-matches"),
    pytest.param(["o w"], False, 1, "Hell", "o w", id="min1-straddles-the-boundary"),
    pytest.param([" world"], False, 1, "Hello", " world", id="min1-next-token"),
    pytest.param([" world"], False, 2, TEXT, None, id="min2-token-2-not-checked"),
    pytest.param([" END", "near"], False, 5, "Hello world, the END is ", "near",
                 id="min5-skips-END-finds-near"),
]


@pytest.mark.parametrize("stop, include, min_tokens, text, stop_string", STOP_CASES)
def test_stop_strings(tok, stop, include, min_tokens, text, stop_string):
    detok, got_stop, deltas = run(tok, ids_of(tok, TEXT), stop=stop,
                                  include_stop_str_in_output=include, min_tokens=min_tokens)
    assert got_stop == stop_string
    assert detok.output_text == text
    check_deltas(deltas, text)


def test_stop_string_found_across_steps_is_searched_only_in_new_text(tok):
    # After a stop string is found nothing more is added, even by flush().
    ids = ids_of(tok, TEXT)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=[" END"]))
    stops = [detok.update(t, False) for t in ids]
    assert stops == [None] * 4 + [" END"] + [None] * 3
    detok.flush()
    assert detok.output_text == "Hello world, the"


# ---- stop_terminated: EOS or a stop token id ended the sequence -------------------------
# ("Hello world" + EOS fed with stop_terminated): (skip_special_tokens, include, text)
EOS = 2  # <|im_end|>
TERMINATED_CASES = [
    pytest.param(True, False, "Hello world", id="eos-skip-special"),
    pytest.param(False, False, "Hello world", id="eos-kept-special-still-dropped"),
    pytest.param(False, True, "Hello world<|im_end|>", id="eos-include"),
    pytest.param(True, True, "Hello world", id="eos-include-but-skipped-as-special"),
]


@pytest.mark.parametrize("skip, include, text", TERMINATED_CASES)
def test_stop_terminated_eos(tok, skip, include, text):
    detok, stop, deltas = run(tok, ids_of(tok, "Hello world") + [EOS],
                              last_stop_terminated=True, skip_special_tokens=skip,
                              include_stop_str_in_output=include)
    assert stop is None and detok.output_text == text
    check_deltas(deltas, text)


@pytest.mark.parametrize("include, text", [(False, TEXT[:-1]), (True, TEXT)])
def test_stop_terminated_by_a_stop_token_id_with_text(tok, include, text):
    # "." ends the sequence as a stop token id: its text goes unless include.
    ids = ids_of(tok, TEXT)
    detok, stop, deltas = run(tok, ids, last_stop_terminated=True, stop_token_ids=[ids[-1]],
                              include_stop_str_in_output=include)
    assert stop is None and detok.output_text == text
    check_deltas(deltas, text)


def test_stop_terminated_keeps_a_pending_multibyte_tail_for_flush(tok):
    # The first two byte tokens of 猫, then EOS: flush() decodes what was pending, as
    # tokenizer.decode does; the EOS token itself adds nothing.
    ids = ids_of(tok, MULTIBYTE)[:2]
    detok, _, _ = run(tok, ids + [EOS], last_stop_terminated=True, skip_special_tokens=False)
    assert detok.output_text == tok.decode(ids) and "\ufffd" in detok.output_text


# ---- DELTA hold-back --------------------------------------------------------------------
@pytest.mark.parametrize("stop, include, holdback", [
    ([], False, 0), (["END"], False, 2), (["x", "long stop"], False, 8),
    (["long stop"], True, 0),  # the stop string is shown anyway: nothing to hide
])
def test_holdback_length(tok, stop, include, holdback):
    detok = IncrementalDetokenizer(tok, [], SamplingParams(
        stop=stop, include_stop_str_in_output=include))
    assert detok.holdback == holdback


def test_deltas_hold_back_a_possible_stop_string_prefix(tok):
    # " is n" would match after " near"; until then deltas must not show " is n"...
    ids = ids_of(tok, TEXT)
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=[" is nowhere"]))
    shown = ""
    for t in ids:
        assert detok.update(t, False) is None
        shown += detok.take_delta(finished=False)
        assert len(shown) == max(0, len(detok.output_text) - len(" is nowhere") + 1)
    detok.flush()
    shown += detok.take_delta(finished=True)  # ...and once finished, everything comes out
    assert shown == TEXT
    assert detok.take_delta(finished=True) == ""


def test_deltas_never_show_a_stop_string(tok):
    ids = ids_of(tok, TEXT)
    for stop in (["END is"], ["d, the E"], ["."], ["Hello world, the END is near."]):
        detok, got, deltas = run(tok, ids, stop=stop)
        assert got == stop[0]
        check_deltas(deltas, detok.output_text)
        assert stop[0] not in "".join(deltas)


# ---- multi-byte characters and special tokens -------------------------------------------
def test_multibyte_characters_split_across_tokens(tok):
    ids = ids_of(tok, MULTIBYTE)
    assert len(ids) > len(MULTIBYTE)  # several tokens per character
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    texts = []
    for t in ids:
        before = detok.output_text
        detok.update(t, False)
        texts.append(detok.output_text[len(before):])
        assert "\ufffd" not in detok.output_text  # only whole characters are emitted
    assert "".join(texts) == detok.output_text == MULTIBYTE
    assert texts[0] == "" and texts[2] == "猫"  # 猫 is three byte tokens


def test_multibyte_stop_string(tok):
    detok, stop, deltas = run(tok, ids_of(tok, MULTIBYTE), stop=["🥞"])
    assert stop == "🥞" and detok.output_text == "猫は可愛い "
    check_deltas(deltas, detok.output_text)


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens(tok, skip):
    ids = ids_of(tok, "<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == EOS
    detok, _, _ = run(tok, ids, skip_special_tokens=skip)
    assert detok.output_text == ("user\nhi" if skip else "<|im_start|>user\nhi<|im_end|>")
    assert detok.output_text == tok.decode(ids, skip_special_tokens=skip)


def test_prompt_gives_context_for_the_first_token(tok):
    prompt = ids_of(tok, PROMPT)
    out = ids_of(tok, PROMPT + " Paris.")[len(prompt):]
    detok, _, _ = run(tok, out, prompt_ids=prompt)
    assert detok.output_text == " Paris."


def test_without_tokenizer_there_is_no_text():
    detok = IncrementalDetokenizer(None, [1, 2, 3], SamplingParams(stop=["a"]))
    assert detok.update(5, False) is None and detok.update(2, True) is None
    detok.flush()
    assert detok.output_text == "" and detok.take_delta(finished=True) == ""


# ---- property: incremental text == tokenizer.decode of all output tokens ----------------
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(prompt=st.lists(st.integers(0, 49151), max_size=8),
       output=st.lists(st.one_of(st.integers(0, 49151), st.integers(0, 300)), max_size=24),
       skip=st.booleans())
def test_incremental_text_equals_decode(tok, prompt, output, skip):
    # Small ids are single bytes and special tokens: many split characters.
    # A prompt that ends inside a character is left out: the output's first bytes then
    # complete the prompt's character, which belongs to neither text (as in vLLM, whose
    # offsets we use), while decode(output) alone shows them as U+FFFD.
    assume(not tok.decode(prompt[-5:], skip_special_tokens=skip).endswith("\ufffd"))
    detok, stop, deltas = run(tok, output, prompt_ids=prompt, skip_special_tokens=skip)
    assert stop is None
    assert detok.output_text == tok.decode(output, skip_special_tokens=skip)
    check_deltas(deltas, detok.output_text)


@PROPERTY
@given(output=st.lists(st.integers(0, 49151), min_size=1, max_size=16),
       data=st.data(), include=st.booleans())
def test_stop_string_cut_is_a_prefix_of_decode(tok, output, data, include):
    full = tok.decode(output, skip_special_tokens=True)
    if not full:
        return
    i = data.draw(st.integers(0, len(full) - 1))
    stop = full[i:data.draw(st.integers(i + 1, min(len(full), i + 6)))]
    detok, got, deltas = run(tok, output, stop=[stop], include_stop_str_in_output=include)
    if "\ufffd" not in stop:  # a U+FFFD may be a byte later completed into a character
        assert got == stop
    if got is not None:
        cut = full.find(stop)  # the first place it appears is where the text ends
        assert detok.output_text == full[:cut + len(stop) if include else cut]
    check_deltas(deltas, detok.output_text)


# ---- OutputProcessor wiring -------------------------------------------------------------
def test_output_processor_passes_stop_terminated(tok):
    from folo_edu.engine.output_processor import OutputProcessor
    from folo_edu.request import Request, RequestStatus

    ids = ids_of(tok, "Hello world")
    for status, stop_reason, text in [
        (RequestStatus.FINISHED_STOPPED, None, "Hello world"),  # EOS: its text dropped
        (RequestStatus.FINISHED_STOPPED, EOS, "Hello world"),  # stop token id: dropped
        (RequestStatus.FINISHED_LENGTH, None, "Hello world<|im_end|>"),  # kept
    ]:
        req = Request("r", [1], SamplingParams(skip_special_tokens=False))
        proc = OutputProcessor(tok)
        proc.add_request(req)
        for t in ids + [EOS]:
            req.output_token_ids.append(t)
            if t == EOS:
                req.status, req.stop_reason = status, stop_reason
            proc.process_token(req)
        assert proc.detok["r"].output_text == text
