"""The CPU decode matmul (linear_backend "numba") against F.linear, alone and in the engine."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from folo_edu import LLM, SamplingParams
from folo_edu.attention import unavailable_reason
from folo_edu.config import EngineConfig

pytestmark = pytest.mark.skipif(unavailable_reason("numba") is not None,
                                reason=f"numba: {unavailable_reason('numba')}")


def _kernel(max_rows=64):
    from folo_edu.models.numba_linear import SkinnyMatmul

    return SkinnyMatmul(max_rows)


def _run(kernel, x, w, b=None, threads=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return kernel(x, w, b)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("cols", [1, 3, 4, 6, 130])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_kernel_equals_f_linear(rows, cols, dtype, atol):
    """Every tile shape: 4x2 tiles, an odd last token row, 1-3 leftover weight rows."""
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    x = torch.randn(rows, 37, generator=g, dtype=dtype)
    w = torch.randn(cols, 37, generator=g, dtype=dtype)
    b = torch.randn(cols, generator=g, dtype=dtype)
    for bias in (None, b):
        ours = _run(_kernel(), x, w, bias)
        assert ours.dtype == dtype and ours.shape == (rows, cols)
        torch.testing.assert_close(ours, F.linear(x, w, bias), rtol=0, atol=atol)


def test_threads_split_columns_exactly():
    """Each output column is the same dot product whichever thread computes it."""
    x, w = torch.randn(5, 576), torch.randn(1001, 576)
    one = _run(_kernel(), x, w)
    assert torch.equal(_run(_kernel(), x, w, threads=2), one)
    assert torch.equal(_run(_kernel(), x, w, threads=3), one)


def test_handles_only_what_it_was_built_for():
    k = _kernel(max_rows=8)
    w = torch.randn(16, 32)
    with torch.inference_mode():
        assert k.handles(torch.randn(8, 32), w)
        assert not k.handles(torch.randn(9, 32), w)                       # too many rows
        assert not k.handles(torch.randn(2, 32, dtype=torch.bfloat16),
                             w.bfloat16())                                # no bf16 kernel
        assert not k.handles(torch.randn(2, 32), w.double())              # mixed dtypes
        assert not k.handles(torch.randn(2, 32), torch.randn(32, 16).t()) # strided weight
    assert not k.handles(torch.randn(2, 32), w)                           # autograd on


def test_backend_choice_and_its_errors():
    from folo_edu.models.numba_linear import SkinnyMatmul, get_linear_kernel

    cpu = torch.device("cpu")
    assert isinstance(get_linear_kernel("auto", cpu, torch.float32), SkinnyMatmul)
    assert get_linear_kernel("auto", cpu, torch.bfloat16) is None
    assert get_linear_kernel("auto", cpu, torch.float32, torch_compile=True) is None
    assert get_linear_kernel("auto", torch.device("cuda"), torch.float32) is None
    assert get_linear_kernel("torch", cpu, torch.float32) is None
    with pytest.raises(ValueError, match=r"linear_backend='numba'.*runs on cuda"):
        get_linear_kernel("numba", torch.device("cuda"), torch.float32)
    with pytest.raises(ValueError, match=r"linear_backend='numba'.*torch_compile"):
        get_linear_kernel("numba", cpu, torch.float32, torch_compile=True)
    with pytest.raises(ValueError, match=r"EngineConfig.linear_backend='fast'.*'auto'"):
        EngineConfig.from_kwargs("m", linear_backend="fast")


@pytest.mark.parametrize("name", ["llama-mha-untied-rope3", "qwen2-bias-gqa4"])
def test_engine_tokens_and_logprobs_equal_the_torch_matmul(tiny_model_dir, name):
    """The same requests with each linear backend: same greedy tokens, logprobs within
    float64 rounding; decode steps (a few rows) went through the kernel."""
    path = str(tiny_model_dir(name, dtype=torch.float64))
    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 7 * i))} for i in range(5)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    results = {}
    for backend in ("torch", "numba"):
        llm = LLM(path, dtype="float64", skip_tokenizer_init=True, max_model_len=128,
                  num_kv_blocks=64, linear_backend=backend)
        runner = llm.llm_engine.model_runner
        assert runner.linear_backend == backend
        results[backend] = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    for ours, ref in zip(results["numba"], results["torch"]):
        assert ours.token_ids == ref.token_ids
        for a, b in zip(ours.logprobs, ref.logprobs):
            assert a.keys() == b.keys()
            for t in a:
                assert abs(a[t].logprob - b[t].logprob) < 1e-9


def test_torch_on_one_thread_lends_torch_threads_to_the_kernels():
    from folo_edu.attention.numba_kernels import kernel_threads, torch_on_one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with torch_on_one_thread():
            assert torch.get_num_threads() == 1 and kernel_threads() == 3
            with torch_on_one_thread():  # nested: no change
                assert torch.get_num_threads() == 1 and kernel_threads() == 3
        assert torch.get_num_threads() == 3 and kernel_threads() == 3
        with pytest.raises(RuntimeError):
            with torch_on_one_thread():
                raise RuntimeError("a failing step")
        assert torch.get_num_threads() == 3 and kernel_threads() == 3  # restored anyway
        k = _kernel(max_rows=4)
        with k.threads_for_step(4):
            assert torch.get_num_threads() == 1
        with k.threads_for_step(5):  # a step torch's GEMM takes: torch keeps its threads
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_engine_at_two_threads_gives_the_same_tokens_and_restores_torch(tiny_model_dir):
    """Decode steps lend torch's threads to the kernels and give them back."""
    path = str(tiny_model_dir("llama-gqa2-tied", dtype=torch.float64))
    llm = LLM(path, dtype="float64", skip_tokenizer_init=True, max_model_len=128,
              num_kv_blocks=64)
    prompts = [{"prompt_token_ids": list(range(5, 30 + 9 * i))} for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    before = torch.get_num_threads()
    tokens = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs = llm.generate(prompts, params, use_tqdm=False)
            assert torch.get_num_threads() == threads
            tokens[threads] = [o.outputs[0].token_ids for o in outs]
    finally:
        torch.set_num_threads(before)
    assert tokens[1] == tokens[2]


def test_threads_are_lent_only_when_the_kernel_runs_every_map():
    """A model whose maps are not all kernel Linears (GPTQ's QuantLinear, M7) keeps
    torch's threads in its steps: those maps run torch ops."""
    from folo_edu.attention import get_backend
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config

    model = DecoderModel(DecoderSpec(tiny_hf_config("llama-gqa2-tied")), get_backend("sdpa"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with model.threads_for_step(1):  # no kernel set
            assert torch.get_num_threads() == 2
        model.set_linear_kernel(_kernel())
        with model.threads_for_step(1):
            assert torch.get_num_threads() == 1
        model.layers[0].mlp.down_proj = torch.nn.Identity()  # stands in for a QuantLinear
        with model.threads_for_step(1):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
