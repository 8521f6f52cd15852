"""M4 oracle: every attention backend that runs here, against transformers and naive.

On a CPU that is naive, sdpa, paged-torch, flex (uncompiled), numba (the CPU kernel)
and triton (in Triton's interpreter, so with few tokens). The same backends run compiled on a GPU in
tests/integration/test_cuda.py. Also: torch.compile and the CUDA-graph runner's
padding path (run eagerly here) give the same tokens as the plain engine.
"""
from __future__ import annotations

import pytest
import torch
from test_03_forward_pass_and_kv_cache import (_hf, _prompts, assert_logits_match_transformers,
                                               hf_greedy)

from folo_edu import LLM, SamplingParams
from folo_edu.attention import available_backends, unavailable_reason
from folo_edu.engine.cuda_graphs import DecodeGraphRunner

# The Triton interpreter runs each kernel program in Python: keep its workloads small.
FAST = [b for b in ("paged-torch", "flex", "numba") if b in available_backends()]
TRITON = pytest.mark.skipif(unavailable_reason("triton") is not None,
                            reason=f"triton: {unavailable_reason('triton')}")


def _generate(path, backend, prompts, max_tokens, **kw):
    """Greedy token ids; max_tokens is one int, or one per prompt."""
    kw = {"max_model_len": 128, "num_kv_blocks": 64, **kw}
    llm = LLM(str(path), dtype="float64", skip_tokenizer_init=True, attention_backend=backend,
              **kw)
    counts = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in counts]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return llm, [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name", ["llama-mha-untied-rope3", "qwen3-odd-headdim"])
def test_greedy_tokens_equal_transformers(tiny_model_dir, name, backend):
    path = tiny_model_dir(name)
    prompts = _prompts(6)
    _, tokens = _generate(path, backend, prompts, 48)
    hf = _hf(path)
    assert tokens == [hf_greedy(hf, p, 48) for p in prompts]


@TRITON
def test_triton_greedy_tokens_equal_transformers(tiny_model_dir):
    path = tiny_model_dir("qwen3-odd-headdim")  # head_dim 24: the kernel pads it to 32
    prompts = _prompts(3)
    _, tokens = _generate(path, "triton", prompts, 12)
    hf = _hf(path)
    assert tokens == [hf_greedy(hf, p, 12) for p in prompts]


@pytest.mark.parametrize("backend", [*FAST, pytest.param("triton", marks=TRITON)])
def test_logits_match_transformers(tiny_model_dir, backend):
    assert_logits_match_transformers(tiny_model_dir("llama-gqa2-tied"), backend)


@pytest.mark.parametrize("backend", [*FAST, "sdpa", pytest.param("triton", marks=TRITON)])
@pytest.mark.parametrize("chunked", [False, True])
def test_every_backend_agrees_with_naive_on_mixed_batches(tiny_model_dir, chunked, backend):
    """Prefills, decodes (and prefill chunks over cached context) in the same steps."""
    path = tiny_model_dir("qwen2-bias-gqa4")
    n, steps = (4, 5) if backend == "triton" else (7, 10)  # the interpreter is slow
    prompts = _prompts(n, seed=3)
    kw = dict(max_num_seqs=n - 2, enable_chunked_prefill=chunked,
              max_num_batched_tokens=16 if chunked else None)
    _, expected = _generate(path, "naive", prompts, steps, **kw)
    assert _generate(path, backend, prompts, steps, **kw)[1] == expected


@pytest.mark.parametrize("backend", [*FAST, pytest.param("triton", marks=TRITON)])
def test_contiguous_cache_one_block_per_sequence(tiny_model_dir, backend):
    """block = max_model_len tokens: the kernels' tiles walk inside one huge block."""
    path = tiny_model_dir("llama-gqa2-tied")
    prompts = _prompts(3, seed=4)
    kw = dict(kv_cache="contiguous", num_kv_blocks=4)
    _, expected = _generate(path, "naive", prompts, 8, **kw)
    assert _generate(path, backend, prompts, 8, **kw)[1] == expected


def test_torch_compile_gives_the_same_tokens(tiny_model_dir):
    path = tiny_model_dir("qwen3-odd-headdim")
    prompts = _prompts(5, seed=6)
    _, expected = _generate(path, "sdpa", prompts, 16)
    llm, tokens = _generate(path, "sdpa", prompts, 16, torch_compile=True)
    assert tokens == expected
    layer = llm.llm_engine.model_runner.model.layers[0]
    assert hasattr(layer.after_attention, "_torchdynamo_orig_callable")  # really compiled


@TRITON
def test_graph_runner_padding_path_gives_the_same_tokens(tiny_model_dir):
    """The decode-graph path (static buffers, buckets, slot -1 padding), run eagerly.

    max_num_seqs=6 gives buckets 1, 2, 4, 6, and staggered max_tokens shrink the batch
    through every size, so padded rows occur at almost every step. Padding rows must
    leave the cache untouched: the slots of finished requests are checked too.
    """
    path = tiny_model_dir("llama-gqa2-tied")
    prompts = _prompts(6, seed=9)
    counts = [2 + 2 * i for i in range(len(prompts))]
    llm = LLM(str(path), dtype="float64", skip_tokenizer_init=True, max_model_len=64,
              attention_backend="triton", num_kv_blocks=32, max_num_seqs=6)
    runner = llm.llm_engine.model_runner
    runner.graph_runner = DecodeGraphRunner(
        runner.model, max_batch=6, max_blocks_per_seq=64 // runner.block_size,
        block_size=runner.block_size, hidden_size=runner.model.spec.hidden_size,
        dtype=runner.dtype, device=runner.device, capture=False)
    calls = []
    real_run = runner.graph_runner.run
    runner.graph_runner.run = lambda *a: calls.append(len(a[0])) or real_run(*a)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in counts]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    snapshot = runner.kv_cache.clone()
    runner.graph_runner.run(*(torch.zeros(2, dtype=torch.long),) * 2,  # padding rows only
                            torch.full((2,), -1), torch.zeros(2, 1, dtype=torch.long),
                            torch.zeros(2, dtype=torch.int32))
    assert torch.equal(runner.kv_cache, snapshot)
    _, expected = _generate(path, "naive", prompts, counts, max_model_len=64)
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert {3, 5} <= set(calls)  # batch sizes that needed padding (buckets 4 and 6)
