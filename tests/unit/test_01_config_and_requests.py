"""M0: configs, SamplingParams, the Request status machine and the output dataclasses."""
from __future__ import annotations

import math

import pytest
import torch

from folo_edu import (CacheConfig, CompletionOutput, EngineConfig, ModelConfig, Request,
                      RequestOutput, RequestOutputKind, RequestStatus, SamplingParams,
                      SchedulerConfig)
from folo_edu.models.loader import resolve_config
from folo_edu.outputs import RequestMetrics
from folo_edu.request import IllegalTransition


def model_config(*args, **kwargs):
    """A ModelConfig with its checkpoint found and attached (what the engine does)."""
    return resolve_config(ModelConfig(*args, **kwargs))


S = RequestStatus


def assert_names(excinfo, cls: str, field: str, value) -> None:
    """The message must name the class.field and the value that was given."""
    msg = str(excinfo.value)
    assert f"{cls}.{field}=" in msg, msg
    assert repr(value) in msg, msg
    assert "expected" in msg, msg


# ---- SamplingParams ---------------------------------------------------------------------

def test_sampling_params_have_vllm_defaults():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs, p.prompt_logprobs) == (
        16, 0, None, None, None)
    assert p.stop == [] and p.stop_token_ids == [] and not p.ignore_eos
    assert p.skip_special_tokens and not p.include_stop_str_in_output
    assert p.output_kind is RequestOutputKind.CUMULATIVE
    assert not p.greedy


def test_sampling_params_normalise_their_inputs():
    p = SamplingParams(stop="###", top_k=-1, stop_token_ids=[7], temperature=0)
    assert p.stop == ["###"] and p.top_k == 0 and p.greedy
    assert p.all_stop_token_ids == {7}
    q = p.clone(temperature=0.7)
    assert q.temperature == 0.7 and not q.greedy and q.stop == ["###"]
    with pytest.raises(ValueError):
        p.clone(top_p=0)


BAD_SAMPLING = [
    ("n", 0, ValueError), ("n", 1.5, TypeError), ("n", True, TypeError),
    ("presence_penalty", 2.5, ValueError), ("presence_penalty", "high", TypeError),
    ("frequency_penalty", -3.0, ValueError), ("frequency_penalty", math.nan, ValueError),
    ("repetition_penalty", 0.0, ValueError), ("repetition_penalty", -1.0, ValueError),
    ("temperature", -0.1, ValueError), ("temperature", math.nan, ValueError),
    ("temperature", None, TypeError),
    ("top_p", 0.0, ValueError), ("top_p", 1.5, ValueError), ("top_p", False, TypeError),
    ("top_k", -2, ValueError), ("top_k", 2.0, TypeError),
    ("min_p", 1.5, ValueError), ("min_p", -0.1, ValueError),
    ("seed", "42", TypeError), ("seed", True, TypeError),
    ("stop", 123, TypeError), ("stop", ["ok", 5], TypeError), ("stop", [""], ValueError),
    ("stop_token_ids", [-1], ValueError), ("stop_token_ids", ["a"], ValueError),
    ("stop_token_ids", [True], ValueError), ("stop_token_ids", 5, ValueError),
    ("max_tokens", 0, ValueError), ("max_tokens", 8.0, TypeError),
    ("min_tokens", -1, ValueError),
    ("logprobs", -1, ValueError), ("prompt_logprobs", -1, ValueError),
    ("ignore_eos", "yes", TypeError), ("skip_special_tokens", 1, TypeError),
    ("include_stop_str_in_output", None, TypeError),
    ("output_kind", "delta", TypeError),
]


@pytest.mark.parametrize("field,value,exc", BAD_SAMPLING,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_SAMPLING])
def test_sampling_params_reject_bad_values(field, value, exc):
    with pytest.raises(exc) as excinfo:
        SamplingParams(**{field: value})
    assert_names(excinfo, "SamplingParams", field, value)


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ValueError) as excinfo:
        SamplingParams(min_tokens=5, max_tokens=3)
    assert_names(excinfo, "SamplingParams", "min_tokens", 5)
    assert "max_tokens=3" in str(excinfo.value)
    assert SamplingParams(min_tokens=5, max_tokens=None).min_tokens == 5


# ---- CacheConfig, SchedulerConfig, ModelConfig field rules -----------------------------

BAD_CACHE = [
    ("block_size", 0, ValueError), ("block_size", 16.0, TypeError),
    ("block_size", True, TypeError),
    ("num_kv_blocks", 0, ValueError), ("num_kv_blocks", "10", TypeError),
    ("kv_cache_memory_bytes", -1, ValueError), ("kv_cache_memory_bytes", 1.5e9, TypeError),
    ("kv_cache", "ring", ValueError), ("enable_prefix_caching", "yes", TypeError),
]
BAD_SCHEDULER = [
    ("max_num_seqs", 0, ValueError), ("max_num_seqs", None, TypeError),
    ("max_num_batched_tokens", 0, ValueError), ("max_num_batched_tokens", 512.0, TypeError),
    ("enable_chunked_prefill", 1, TypeError),
]


@pytest.mark.parametrize("field,value,exc", BAD_CACHE, ids=[f"{f}={v!r}" for f, v, _ in BAD_CACHE])
def test_cache_config_rejects_bad_values(field, value, exc):
    with pytest.raises(exc) as excinfo:
        CacheConfig(**{field: value})
    assert_names(excinfo, "CacheConfig", field, value)


@pytest.mark.parametrize("field,value,exc", BAD_SCHEDULER,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_SCHEDULER])
def test_scheduler_config_rejects_bad_values(field, value, exc):
    with pytest.raises(exc) as excinfo:
        SchedulerConfig(**{field: value})
    assert_names(excinfo, "SchedulerConfig", field, value)


BAD_MODEL = [
    ("dtype", "fp16", ValueError), ("device", "tpu", ValueError),
    ("seed", -1, ValueError), ("seed", 1.0, TypeError),
    ("trust_remote_code", True, ValueError),
    ("max_model_len", 0, ValueError), ("max_model_len", 513, ValueError),
    ("max_model_len", 64.0, TypeError),
]


@pytest.mark.parametrize("field,value,exc", BAD_MODEL, ids=[f"{f}={v!r}" for f, v, _ in BAD_MODEL])
def test_model_config_rejects_bad_values(tiny_model_dir, field, value, exc):
    with pytest.raises(exc) as excinfo:
        model_config(str(tiny_model_dir()), **{field: value})
    assert_names(excinfo, "ModelConfig", field, value)


def test_max_model_len_comes_from_the_checkpoint(tiny_model_dir):
    mc = model_config(str(tiny_model_dir()))  # the tiny models have max_position_embeddings=512
    assert mc.max_model_len == 512
    assert model_config(str(tiny_model_dir()), max_model_len=100).max_model_len == 100
    with pytest.raises(ValueError, match=r"max_model_len=1024: expected an int in \[1, 512\]"):
        model_config(str(tiny_model_dir()), max_model_len=1024)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_device_without_a_gpu_fails_at_config_time(tiny_model_dir):
    with pytest.raises(ValueError) as excinfo:
        model_config(str(tiny_model_dir()), device="cuda")
    assert_names(excinfo, "ModelConfig", "device", "cuda")


def test_dtype_auto_is_float32_on_cpu(tiny_model_dir):
    assert model_config(str(tiny_model_dir()), device="cpu").torch_dtype == torch.float32
    # Even when the checkpoint itself is stored in bfloat16.
    bf16 = tiny_model_dir("llama-gqa2-tied", dtype=torch.bfloat16)
    assert model_config(str(bf16), device="cpu").torch_dtype == torch.float32
    assert model_config(str(bf16), dtype="bfloat16").torch_dtype == torch.bfloat16


@pytest.mark.cuda
def test_dtype_auto_is_half_precision_on_cuda(tiny_model_dir):
    mc = model_config(str(tiny_model_dir()), device="cuda")
    assert mc.torch_dtype in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("name,layers,kv_heads,head_dim", [
    ("llama-gqa2-tied", 2, 2, 16), ("llama-mha-untied-rope3", 3, 4, 12),
    ("qwen2-bias-gqa4", 2, 2, 8), ("qwen3-odd-headdim", 2, 2, 24)])
def test_kv_bytes_per_token_from_the_checkpoint(tiny_model_dir, name, layers, kv_heads, head_dim):
    mc = model_config(str(tiny_model_dir(name)), device="cpu")
    assert (mc.num_layers, mc.num_kv_heads, mc.head_dim) == (layers, kv_heads, head_dim)
    assert mc.kv_bytes_per_token() == 2 * layers * kv_heads * head_dim * 4  # K and V, fp32
    assert model_config(str(tiny_model_dir(name)), dtype="float16").kv_bytes_per_token() == (
        2 * layers * kv_heads * head_dim * 2)


# ---- EngineConfig: cross-field rules and KV block sizing --------------------------------

def engine(tiny_model_dir, max_model_len=None, **kw):
    return resolve_config(EngineConfig.from_kwargs(str(tiny_model_dir()), device="cpu",
                                                   max_model_len=max_model_len, **kw))


def test_batched_tokens_must_cover_max_model_len_without_chunked_prefill(tiny_model_dir):
    with pytest.raises(ValueError) as excinfo:
        engine(tiny_model_dir, max_num_batched_tokens=256, enable_chunked_prefill=False)
    assert_names(excinfo, "SchedulerConfig", "max_num_batched_tokens", 256)
    assert "max_model_len=512" in str(excinfo.value)
    ok = engine(tiny_model_dir, max_num_batched_tokens=256, enable_chunked_prefill=True)
    assert ok.scheduler_config.max_num_batched_tokens == 256


def test_batched_tokens_must_cover_max_num_seqs(tiny_model_dir):
    with pytest.raises(ValueError) as excinfo:
        engine(tiny_model_dir, max_num_batched_tokens=32, max_num_seqs=64,
               enable_chunked_prefill=True)
    assert_names(excinfo, "SchedulerConfig", "max_num_batched_tokens", 32)
    assert "max_num_seqs=64" in str(excinfo.value)


def test_batched_tokens_defaults(tiny_model_dir):
    sc = engine(tiny_model_dir).scheduler_config
    assert sc.enable_chunked_prefill and sc.max_num_batched_tokens == 2048  # vLLM v1: chunked
    whole = engine(tiny_model_dir, enable_chunked_prefill=False)
    assert whole.scheduler_config.max_num_batched_tokens == 2048


@pytest.mark.parametrize("kw,exc", [
    ({"long_prefill_token_threshold": -1}, ValueError),
    ({"long_prefill_token_threshold": 2.5}, TypeError),
    ({"long_prefill_token_threshold": 8, "enable_chunked_prefill": False}, ValueError)])
def test_long_prefill_token_threshold_is_checked(kw, exc):
    with pytest.raises(exc) as excinfo:
        SchedulerConfig(**kw)
    assert_names(excinfo, "SchedulerConfig", "long_prefill_token_threshold",
                 kw["long_prefill_token_threshold"])


def test_bad_attention_backend(tiny_model_dir):
    with pytest.raises(ValueError) as excinfo:
        engine(tiny_model_dir, attention_backend="flash")
    assert_names(excinfo, "EngineConfig", "attention_backend", "flash")


def test_kv_blocks_from_a_memory_budget(tiny_model_dir):
    per_token = 2 * 2 * 2 * 16 * 4  # layers * kv heads * head_dim * fp32, for K and V
    cfg = engine(tiny_model_dir, block_size=16, kv_cache_memory_bytes=100 * 16 * per_token + 5)
    assert cfg.kv_bytes_per_block == 16 * per_token
    assert cfg.cache_config.num_kv_blocks == 100
    assert engine(tiny_model_dir).cache_config.num_kv_blocks == (1 << 30) // (16 * per_token)
    assert engine(tiny_model_dir, num_kv_blocks=7).cache_config.num_kv_blocks == 7


def test_contiguous_cache_has_one_block_per_sequence(tiny_model_dir):
    per_token = 2 * 2 * 2 * 16 * 4
    cfg = engine(tiny_model_dir, max_model_len=128, kv_cache="contiguous",
                 kv_cache_memory_bytes=3 * 128 * per_token)
    assert cfg.tokens_per_block == 128 and cfg.cache_config.num_kv_blocks == 3


def test_budget_below_one_block_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError) as excinfo:
        engine(tiny_model_dir, kv_cache_memory_bytes=1000)
    assert_names(excinfo, "CacheConfig", "kv_cache_memory_bytes", 1000)
    assert str(16 * 512) in str(excinfo.value)  # one block's size in bytes


# ---- Request status machine -------------------------------------------------------------

# Written out by hand (not imported) so that a change to the machine fails this test.
LEGAL = {(S.WAITING, S.RUNNING), (S.WAITING, S.FINISHED_ABORTED),
         (S.WAITING, S.FINISHED_ERROR),
         (S.RUNNING, S.PREEMPTED), (S.RUNNING, S.FINISHED_STOPPED),
         (S.RUNNING, S.FINISHED_LENGTH), (S.RUNNING, S.FINISHED_ABORTED),
         (S.RUNNING, S.FINISHED_ERROR),
         (S.PREEMPTED, S.RUNNING), (S.PREEMPTED, S.FINISHED_ABORTED),
         (S.PREEMPTED, S.FINISHED_ERROR),
         (S.FINISHED_STOPPED, S.FINISHED_ERROR), (S.FINISHED_LENGTH, S.FINISHED_ERROR)}
PATH_TO = {S.WAITING: [], S.RUNNING: [S.RUNNING], S.PREEMPTED: [S.RUNNING, S.PREEMPTED],
           S.FINISHED_STOPPED: [S.RUNNING, S.FINISHED_STOPPED],
           S.FINISHED_LENGTH: [S.RUNNING, S.FINISHED_LENGTH],
           S.FINISHED_ABORTED: [S.FINISHED_ABORTED], S.FINISHED_ERROR: [S.FINISHED_ERROR]}
PAIRS = [(a, b) for a in S for b in S]


def make_request(rid="r0") -> Request:
    return Request(rid, [1, 2, 3], SamplingParams(max_tokens=4), eos_token_ids={2})


@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{a.name}->{b.name}" for a, b in PAIRS])
def test_every_transition(src, dst):
    req = make_request()
    for step in PATH_TO[src]:
        req.transition(step)
    assert req.status is src
    if (src, dst) in LEGAL:
        req.transition(dst)
        assert req.status is dst
    else:
        with pytest.raises(IllegalTransition) as excinfo:
            req.transition(dst)
        assert f"{src.name} -> {dst.name}" in str(excinfo.value)
        assert "'r0'" in str(excinfo.value)
        assert req.status is src


def test_a_request_counts_its_tokens():
    req = make_request()
    assert (req.num_prompt_tokens, req.num_output_tokens, req.num_tokens) == (3, 0, 3)
    assert req.status is S.WAITING and not req.is_finished and req.first_token_time is None
    req.transition(S.RUNNING)
    req.num_computed_tokens = 3
    req.append_output_token(9)
    assert req.all_token_ids == [1, 2, 3, 9] and req.num_tokens == 4
    assert req.first_token_time is not None and req.first_token_time >= req.arrival_time
    assert "RUNNING" in repr(req)


def test_preemption_resets_computed_tokens():
    req = make_request()
    req.transition(S.RUNNING)
    req.num_computed_tokens = 3
    req.append_output_token(9)
    req.transition(S.PREEMPTED)
    assert req.num_computed_tokens == 0 and req.num_preemptions == 1
    assert req.output_token_ids == [9]  # what was generated is kept, only the cache is lost
    req.transition(S.RUNNING)
    req.transition(S.FINISHED_LENGTH)
    assert req.is_finished and req.finished_time is not None


@pytest.mark.parametrize("status,reason", [
    (S.WAITING, None), (S.RUNNING, None), (S.PREEMPTED, None),
    (S.FINISHED_STOPPED, "stop"), (S.FINISHED_LENGTH, "length"), (S.FINISHED_ABORTED, "abort"),
    (S.FINISHED_ERROR, "error")])
def test_finish_reasons(status, reason):
    assert status.finish_reason == reason
    assert status.finished == (reason is not None)


# ---- outputs ----------------------------------------------------------------------------

def test_output_dataclasses():
    done = CompletionOutput(0, "Paris.", [5, 6], finish_reason="stop", stop_reason=2)
    running = CompletionOutput(1, "Par", [5])
    assert done.finished() and not running.finished()
    metrics = RequestMetrics(arrival_time=10.0, first_token_time=10.25)
    assert metrics.ttft == pytest.approx(0.25)
    assert RequestMetrics(arrival_time=10.0).ttft is None
    out = RequestOutput("r0", "Hi", [1, 2], [done], finished=True, metrics=metrics)
    assert out.outputs[0].text == "Paris." and out.outputs[0].token_ids == [5, 6]
    assert out.num_cached_tokens == 0 and out.prompt_logprobs is None and out.extra == {}
