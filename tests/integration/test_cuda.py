"""The engine on a CUDA GPU: the same oracle checks as on CPU. Skipped without a GPU.

scripts/gpu_check.sh runs these on a lent GPU machine; on CPU-only machines the
conftest marks them skipped with the reason.
"""
from __future__ import annotations

import pytest
import torch

from folo_edu import LLM, SamplingParams
from folo_edu.attention import BACKENDS
from folo_edu.models.tiny import TINY_CONFIGS

pytestmark = pytest.mark.cuda


def _prompts(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (int(torch.randint(2, 30, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_cuda_greedy_equals_transformers_float64(tiny_model_dir, name, backend):
    from transformers import AutoModelForCausalLM

    path = str(tiny_model_dir(name))
    llm = LLM(path, device="cuda", dtype="float64", skip_tokenizer_init=True,
              max_model_len=128, attention_backend=backend, num_kv_blocks=64)
    assert next(llm.llm_engine.model_runner.model.parameters()).is_cuda
    prompts = _prompts()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
                        use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).cuda().eval()
    hf.generation_config.eos_token_id = None
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=32,
                              do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == ref


def test_cuda_auto_dtype_is_half_precision_and_runs(tiny_model_dir):
    path = str(tiny_model_dir("qwen3-odd-headdim"))
    llm = LLM(path, skip_tokenizer_init=True, max_model_len=128, num_kv_blocks=64)
    runner = llm.llm_engine.model_runner
    assert runner.device.type == "cuda"
    assert runner.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts(8)],
                        SamplingParams(temperature=0.8, seed=1, max_tokens=16, ignore_eos=True),
                        use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 16 for o in outs)
    assert llm.llm_engine.get_stats()["kv_blocks_used"] == 0


@pytest.mark.parametrize("name", ["llama-gqa2-tied", "qwen3-odd-headdim"])
def test_cuda_graphs_replay_the_same_tokens_as_eager(tiny_model_dir, name):
    """Triton + CUDA graphs against triton eager, float64: identical greedy tokens.

    max_num_seqs=6 makes buckets 1, 2, 4, 6; 11 prompts make batches of every size
    as requests finish, so padded rows are exercised.
    """
    path = str(tiny_model_dir(name))
    prompts = _prompts(11, seed=5)
    params = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True)
              for i in range(len(prompts))]
    tokens = {}
    for eager in (True, False):
        llm = LLM(path, device="cuda", dtype="float64", skip_tokenizer_init=True,
                  max_model_len=128, attention_backend="triton", num_kv_blocks=64,
                  max_num_seqs=6, enforce_eager=eager)
        runner = llm.llm_engine.model_runner
        assert (runner.graph_runner is None) == eager, runner.cuda_graph_status
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        tokens[eager] = [o.outputs[0].token_ids for o in outs]
    assert tokens[True] == tokens[False]
