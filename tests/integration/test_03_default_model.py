"""M1 on the real default model (SmolLM2-135M-Instruct, float32): tokens and text.

Greedy tokens must equal transformers'; the text path (incremental detokenizer,
stop strings, streaming, chat template) is checked against the tokenizer itself.
"""
from __future__ import annotations

import pytest
import torch

from folo_edu import LLM, SamplingParams, download_model

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
]


@pytest.fixture(scope="module")
def path():
    return download_model(quiet=True)


@pytest.fixture(scope="module")
def llm(path):
    return LLM(path, max_model_len=1024, dtype="float32")


@pytest.fixture(scope="module")
def hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_greedy_32_tokens_equal_transformers(llm, hf):
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    hf.generation_config.eos_token_id = None
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                              pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == ref, prompt
        assert out.outputs[0].text == tok.decode(ref, skip_special_tokens=True)


def test_chat_answers_readably(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0]
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"  # ended on <|im_end|>
    assert out.outputs[0].stop_reason is None


def test_stream_equals_whole_decode_with_multibyte_text(llm):
    tok = llm.get_tokenizer()
    # Emoji and accented letters are split across byte-level BPE tokens.
    prompt = "Translate to French with emoji: I love coffee ☕ and crêpes 🥞. Réponse:"
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=40, ignore_eos=True)
    pieces = list(llm.stream(prompt, params))
    final = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert "".join(pieces) == final.text == tok.decode(final.token_ids,
                                                       skip_special_tokens=True)
    assert len(pieces) > 5


def test_stream_aborts_when_the_caller_stops_early(llm):
    engine = llm.llm_engine
    engine.add_request("other", "Hello", SamplingParams(temperature=0, max_tokens=30,
                                                         ignore_eos=True))
    gen = llm.stream("Once upon a time", SamplingParams(temperature=0, max_tokens=30,
                                                         ignore_eos=True))
    pieces = [next(gen), next(gen)]
    gen.close()  # the caller stops early: its request is aborted, the other one stays
    assert all(pieces) and set(engine._groups) == {"other"}
    engine.abort_request("other")
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_cuts_text(llm, include):
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, stop=[" Paris"],
                            include_stop_str_in_output=include)
    out = llm.generate("The capital of France is", params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == " Paris"
    assert out.text.endswith(" Paris") == include
    assert " Paris" not in out.text[:-len(" Paris")] if include else " Paris" not in out.text


def test_stop_string_on_the_last_allowed_token_is_stop(llm):
    """vLLM: a stop string wins over "length" even on the step that reaches max_tokens."""
    prompt, greedy = "The capital of France is", SamplingParams(temperature=0, max_tokens=16,
                                                                 ignore_eos=True)
    full = llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0]
    tok = llm.get_tokenizer()
    n = next(i + 1 for i in range(len(full.token_ids))
             if " Paris" in tok.decode(full.token_ids[:i + 1]))
    params = greedy.clone(max_tokens=n, stop=[" Paris"])
    out = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == n
    assert out.finish_reason == "stop" and out.stop_reason == " Paris"


def test_stop_token_ids_and_min_tokens(llm):
    tok = llm.get_tokenizer()
    greedy = llm.generate("The capital of France is",
                          SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0].token_ids
    stop_id = greedy[3]
    out = llm.generate("The capital of France is",
                       SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id]),
                       use_tqdm=False)[0].outputs[0]
    first = greedy.index(stop_id)
    assert out.token_ids == greedy[:first + 1]
    assert out.stop_reason == stop_id and out.finish_reason == "stop"
    # min_tokens suppresses EOS: a chat answer that would stop early goes on.
    chat = [{"role": "user", "content": "Say hi."}]
    short = llm.chat(chat, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)
    n = len(short[0].outputs[0].token_ids)
    longer = llm.chat(chat, SamplingParams(temperature=0, max_tokens=64, min_tokens=n + 5),
                      use_tqdm=False)[0].outputs[0]
    assert len(longer.token_ids) >= n + 5
    assert tok.eos_token_id not in longer.token_ids[:n + 5]


def test_logprobs_and_prompt_logprobs(llm, hf):
    tok = llm.get_tokenizer()
    prompt = "The capital of France is"
    ids = tok.encode(prompt)
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2,
                            ignore_eos=True)
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    comp = out.outputs[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids + comp.token_ids])).logits[0].double(), -1)
    for i, (token, lp) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = ref[len(ids) - 1 + i]
        assert token in lp and len(lp) == 3  # greedy token is in the top 3
        assert set(lp) == set(row.topk(3).indices.tolist())
        for t, entry in lp.items():  # vLLM's Logprob: value, rank and the token's text
            assert entry.logprob == pytest.approx(row[t].item(), abs=1e-4)
            assert entry.rank == 1 + int((row > row[t]).sum())
            assert entry.decoded_token == tok.decode([t])
        assert lp[token].rank == 1  # greedy
    assert comp.cumulative_logprob == pytest.approx(
        sum(lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)), abs=1e-6)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for pos in range(1, len(ids)):
        entry = out.prompt_logprobs[pos]
        assert ids[pos] in entry and len(entry) in (2, 3)
        actual, row = entry[ids[pos]], ref[pos - 1]
        assert actual.logprob == pytest.approx(row[ids[pos]].item(), abs=1e-4)
        assert actual.rank == 1 + int((row > row[ids[pos]]).sum())


def test_bad_prompts_raise_clear_errors(llm):
    with pytest.raises(ValueError, match="0 tokens"):
        llm.generate("", use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len - 1 = 1023"):
        llm.generate({"prompt_token_ids": [5] * 2000}, use_tqdm=False)
    with pytest.raises(ValueError, match="token id 49152 is outside"):
        llm.generate({"prompt_token_ids": [5, 49152]}, use_tqdm=False)
    with pytest.raises(ValueError, match="max_tokens=2000"):
        llm.generate("Hi", SamplingParams(max_tokens=2000), use_tqdm=False)
    out = llm.generate("Hi", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) >= 1  # the engine still serves
