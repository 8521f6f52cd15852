"""vLLM v1 semantics (issue 17): stop order, seeds, Logprob objects, n>1 ids and DELTA,
and a step() that stays consistent whatever raises inside it.

Tiny float64 models, so greedy tokens and logprobs are exact against transformers.
"""
from __future__ import annotations

import pytest
import torch

from folo_edu import LLM, SamplingParams
from folo_edu.engine.llm_engine import EngineStepError, LLMEngine
from folo_edu.engine.scheduler import Scheduler
from folo_edu.config import SchedulerConfig
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.request import Request, RequestStatus
from folo_edu.sampling_params import RequestOutputKind

S = RequestStatus
EOS = 2


@pytest.fixture(scope="module")
def model_path(tiny_model_dir):
    return str(tiny_model_dir("llama-gqa2-tied"))


def _engine(path, **kw):
    kw = {"dtype": "float64", "skip_tokenizer_init": True, "max_model_len": 64,
          "num_kv_blocks": 64, "block_size": 4, **kw}
    return LLMEngine.from_kwargs(path, **kw)


def _drain(engine, ignore_errors=False):
    """Step until done; {request id: last RequestOutput}."""
    last = {}
    while engine.has_unfinished_requests():
        try:
            outs = engine.step()
        except EngineStepError as e:
            if not ignore_errors:
                raise
            outs = e.outputs
        for out in outs:
            last[out.request_id] = out
    return last


# ---- stop rules, table-driven (vllm/v1/core/sched/utils.py: check_stop) ----------------
# (min_tokens, max_tokens, stop_token_ids, ignore_eos, outputs so far incl. the new token,
#  expected status, expected stop_reason)
STOP_RULES = [
    (0, 10, [], False, [5, EOS], S.FINISHED_STOPPED, None),        # EOS stops
    (0, 2, [], False, [5, EOS], S.FINISHED_STOPPED, None),         # EOS on the last token: stop
    (0, 2, [], False, [5, 6], S.FINISHED_LENGTH, None),            # max_tokens reached
    (3, 10, [], False, [5, EOS], None, None),                      # before min_tokens: go on
    (2, 10, [], False, [5, EOS], S.FINISHED_STOPPED, None),        # min_tokens reached
    (0, 10, [], True, [5, EOS], None, None),                       # ignore_eos
    (0, 10, [7], False, [5, 7], S.FINISHED_STOPPED, 7),            # stop token id
    (0, 2, [7], False, [5, 7], S.FINISHED_STOPPED, 7),             # stop id on the last: stop
    (3, 10, [7], False, [5, 7], None, None),                       # stop id before min_tokens
    (0, 10, [7], True, [5, 7], S.FINISHED_STOPPED, 7),             # ignore_eos keeps stop ids
]


@pytest.mark.parametrize("min_t,max_t,stop_ids,ignore_eos,outs,status,reason", STOP_RULES)
def test_stop_rules(min_t, max_t, stop_ids, ignore_eos, outs, status, reason):
    sched = Scheduler(SchedulerConfig(4, 64), KVCacheManager(8, 4), max_model_len=64)
    params = SamplingParams(min_tokens=min_t, max_tokens=max_t, stop_token_ids=stop_ids,
                            ignore_eos=ignore_eos)
    req = Request("r", [1, 3], params, eos_token_ids={EOS})
    for t in outs:
        req.append_output_token(t)
    assert sched._check_stop(req, outs[-1]) == status
    assert req.stop_reason == reason


def test_max_model_len_caps_like_max_tokens():
    sched = Scheduler(SchedulerConfig(4, 64), KVCacheManager(8, 4), max_model_len=4)
    req = Request("r", [1, 3, 4], SamplingParams(max_tokens=None), eos_token_ids={EOS})
    req.append_output_token(5)
    assert sched._check_stop(req, 5) == S.FINISHED_LENGTH


def test_stop_token_on_the_last_allowed_token_is_stop(model_path):
    engine = _engine(model_path)
    engine.add_request("ref", {"prompt_token_ids": [5, 9, 11]},
                       SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    tokens = _drain(engine)["ref"].outputs[0].token_ids
    last = tokens[-1]
    n = tokens.index(last) + 1  # first time that token appears
    engine.add_request("r", {"prompt_token_ids": [5, 9, 11]},
                       SamplingParams(temperature=0, max_tokens=n, ignore_eos=True,
                                      stop_token_ids=[last]))
    out = _drain(engine)["r"].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == last
    assert out.token_ids == tokens[:n]


def test_eos_ids_come_from_generation_config(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir(), folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    engine = _engine(str(folder))
    assert engine.eos_token_ids == {2, 7}


def test_min_tokens_must_fit_the_context(model_path):
    engine = _engine(model_path, max_model_len=16)
    with pytest.raises(ValueError, match="min_tokens=20.*at most 13 more"):
        engine.add_request("r", {"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(min_tokens=20, max_tokens=None))
    assert not engine.has_unfinished_requests()


# ---- seeds ----------------------------------------------------------------------------
def _sample_run(path, seed):
    llm = LLM(path, dtype="float64", skip_tokenizer_init=True, max_model_len=64, seed=seed)
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": [5, 9]}, {"prompt_token_ids": [7]}], params,
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_engine_seed_makes_unseeded_sampling_repeat(model_path):
    a, b, c = _sample_run(model_path, 1), _sample_run(model_path, 1), _sample_run(model_path, 2)
    assert a == b
    assert a != c


def test_engine_seed_leaves_request_seeds_alone(model_path):
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=42)
    runs = []
    for engine_seed in (1, 2):
        llm = LLM(model_path, dtype="float64", skip_tokenizer_init=True, max_model_len=64,
                  seed=engine_seed)
        runs.append(llm.generate({"prompt_token_ids": [5, 9]}, params, use_tqdm=False)[0]
                    .outputs[0].token_ids)
    assert runs[0] == runs[1]


# ---- logprobs as vLLM returns them ------------------------------------------------------
def test_logprobs_are_logprob_objects_equal_to_transformers(model_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).eval()
    llm = LLM(model_path, dtype="float64", skip_tokenizer_init=True, max_model_len=64)
    prompt = [5, 9, 11, 4]
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=5, logprobs=4,
                            prompt_logprobs=3, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    comp = out.outputs[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt + comp.token_ids])).logits[0], -1)
    for i, (token, lps) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = ref[len(prompt) - 1 + i]
        assert next(iter(lps)) == token  # the sampled token is listed first
        assert set(row.topk(4).indices.tolist()) <= set(lps)
        for t, lp in lps.items():
            assert lp.logprob == pytest.approx(row[t].item(), abs=1e-9)
            assert lp.rank == 1 + int((row > row[t]).sum())
            assert lp.decoded_token is None  # no tokenizer
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        row, actual = ref[pos - 1], out.prompt_logprobs[pos][prompt[pos]]
        assert actual.logprob == pytest.approx(row[prompt[pos]].item(), abs=1e-9)
        assert actual.rank == 1 + int((row > row[prompt[pos]]).sum())


# ---- n > 1 ----------------------------------------------------------------------------
def test_child_ids_never_collide_with_user_ids(model_path):
    engine = _engine(model_path)
    p = SamplingParams(n=2, max_tokens=3, temperature=0)
    engine.add_request("a", {"prompt_token_ids": [5]}, p)
    with pytest.raises(ValueError, match="'a#0' is already running"):
        engine.add_request("a#0", {"prompt_token_ids": [5]}, SamplingParams(max_tokens=3))
    engine.add_request("x#1", {"prompt_token_ids": [5]}, SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="'x#1' is already running"):
        engine.add_request("x", {"prompt_token_ids": [5]}, p)
    outs = _drain(engine)
    assert set(outs) == {"a", "x#1"} and len(outs["a"].outputs) == 2


def test_delta_returns_only_the_completions_that_changed(model_path):
    engine = _engine(model_path, max_num_seqs=1)  # one sample at a time
    params = SamplingParams(n=2, max_tokens=4, temperature=1.0, seed=5, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    engine.add_request("a", {"prompt_token_ids": [5, 6]}, params)
    seen = {0: [], 1: []}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert len(out.outputs) == 1  # only one sample runs, so only one changes
            for comp in out.outputs:
                assert comp.token_ids
                seen[comp.index] += comp.token_ids
    assert len(seen[0]) == len(seen[1]) == 4


def test_abort_of_the_parent_aborts_every_child(model_path):
    engine = _engine(model_path)
    engine.add_request("a", {"prompt_token_ids": [5, 6]},
                       SamplingParams(n=3, max_tokens=20, ignore_eos=True))
    engine.step()
    engine.abort_request("a")
    assert not engine.has_unfinished_requests() and not engine.scheduler.requests
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


# ---- faults -----------------------------------------------------------------------------
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _reference(path, prompts):
    engine = _engine(path)
    for rid, ids in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": ids}, GREEDY)
    return {rid: out.outputs[0].token_ids for rid, out in _drain(engine).items()}


def _fail_once(monkeypatch, obj, name, when):
    """Make obj.name raise RuntimeError on the call where when(call_number) is True."""
    real, calls = getattr(obj, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if when(calls[0]):
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)


@pytest.mark.parametrize("stage", ["model", "sampler"])
def test_a_failing_step_fails_its_requests_and_keeps_the_engine(model_path, monkeypatch, stage):
    prompts = {"early": [5, 9, 11], "late": [7, 3]}
    ref = _reference(model_path, prompts)
    engine = _engine(model_path)
    engine.add_request("early", {"prompt_token_ids": prompts["early"]}, GREEDY)
    engine.step()
    engine.step()
    target = engine.model_runner.model if stage == "model" else engine.model_runner
    _fail_once(monkeypatch, target, "forward" if stage == "model" else "sampler",
               lambda n: n == 1)
    with pytest.raises(EngineStepError, match="injected fault") as excinfo:
        engine.step()
    assert excinfo.value.request_ids == ["early"]
    [out] = excinfo.value.outputs
    assert out.finished and out.outputs[0].finish_reason == "error"
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
    assert not engine.has_unfinished_requests()
    engine.add_request("late", {"prompt_token_ids": prompts["late"]}, GREEDY)
    assert _drain(engine)["late"].outputs[0].token_ids == ref["late"]


def test_a_failing_detokenizer_fails_only_its_request(model_path, monkeypatch):
    prompts = {"a": [5, 9, 11], "b": [7, 3], "c": [8]}
    ref = _reference(model_path, prompts)
    engine = _engine(model_path)
    for rid, ids in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": ids}, GREEDY)
    engine.step()
    _fail_once(monkeypatch, engine.output_processor.detok["b"], "update", lambda n: n == 2)
    outs = _drain(engine, ignore_errors=True)
    assert outs["b"].outputs[0].finish_reason == "error"
    for rid in ("a", "c"):
        assert outs[rid].outputs[0].token_ids == ref[rid]
        assert outs[rid].outputs[0].finish_reason == "length"
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


def test_generate_aborts_its_requests_when_the_loop_raises(model_path, monkeypatch):
    llm = LLM(model_path, dtype="float64", skip_tokenizer_init=True, max_model_len=64)
    engine = llm.llm_engine
    _fail_once(monkeypatch, engine, "step", lambda n: n == 3)
    with pytest.raises(RuntimeError, match="injected fault"):
        llm.generate([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}],
                     SamplingParams(max_tokens=20, ignore_eos=True), use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
