"""M1 oracle: our decoder, KV cache and engine against transformers, in float64.

Tiny random models in float64 make every difference visible: greedy tokens must be
identical for 64 tokens, and logits must agree to 1e-9, for every architecture
switch (tied/untied, GQA ratio, q/k/v bias, q/k norm, odd head_dim, llama3 rope).
"""
from __future__ import annotations

import pytest
import torch

from folo_edu import LLM, SamplingParams
from folo_edu.attention import AttentionMetadata, get_backend
from folo_edu.models.loader import load_hf_config
from folo_edu.models.tiny import TINY_CONFIGS
from folo_edu.models.weights import load_model

NAMES = list(TINY_CONFIGS)
VOCAB = 256


def _prompts(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (L,), generator=g).tolist() for L in lengths]


def _hf(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    model.generation_config.eos_token_id = None  # compare raw greedy streams, no early stop
    return model


_HF_CACHE: dict = {}


def hf_greedy(model, prompt, n):
    """transformers' greedy continuation (memoised: both backends compare to it)."""
    key = (model.config.name_or_path, tuple(prompt), n)
    if key in _HF_CACHE:
        return _HF_CACHE[key]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    _HF_CACHE[key] = out[0, len(prompt):].tolist()
    return _HF_CACHE[key]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_transformers(tiny_model_dir, name, backend):
    path = tiny_model_dir(name)
    llm = LLM(str(path), dtype="float64", skip_tokenizer_init=True, max_model_len=256,
              attention_backend=backend, num_kv_blocks=128)
    prompts = _prompts()
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    hf = _hf(path)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 64), f"prompt {prompt}"
        assert out.outputs[0].finish_reason == "length"


def _forward_logits(model, ids, block_size=8, num_blocks=16):
    """Our model on one sequence: prefill all but the last 4 tokens, then decode 4 steps.

    Returns logits for every position, so both the prefill path and the decode path
    (reading K/V back from the cache) are compared.
    """
    spec = model.spec
    cache = torch.zeros(2, spec.num_layers, num_blocks, block_size, spec.num_kv_heads,
                        spec.head_dim, dtype=torch.float64)
    for i, layer in enumerate(model.layers):
        layer.self_attn.k_cache, layer.self_attn.v_cache = cache[0, i], cache[1, i]
    table = torch.arange(num_blocks)[None]
    logits, start = [], 0
    for end in [len(ids) - 4, *range(len(ids) - 3, len(ids) + 1)]:
        pos = torch.arange(start, end)
        meta = AttentionMetadata.build([end - start], [end], pos.clone(), table, block_size)
        hidden = model(torch.tensor(ids[start:end]), pos, meta)
        logits.append(model.compute_logits(hidden))
        start = end
    return torch.cat(logits)


def assert_logits_match_transformers(path, backend: str) -> None:
    """Our float64 model with `backend` on the prefill and decode paths, against transformers."""
    model = load_model(path, load_hf_config(path), get_backend(backend), torch.float64,
                       torch.device("cpu"))
    ids = _prompts(1, seed=7)[0] + _prompts(1, seed=8)[0] + [5, 6, 7, 8, 9]
    with torch.no_grad():
        ours = _forward_logits(model, ids)
        ref = _hf(path)(torch.tensor([ids])).logits[0]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(tiny_model_dir, name, backend):
    assert_logits_match_transformers(tiny_model_dir(name), backend)


def test_backends_agree_on_mixed_batches(tiny_model_dir):
    """naive and sdpa give the same tokens when prefills and decodes share a step."""
    path = tiny_model_dir("qwen2-bias-gqa4")
    prompts = _prompts(12, seed=3)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    results = []
    for backend in ["naive", "sdpa"]:
        llm = LLM(str(path), dtype="float64", skip_tokenizer_init=True, max_model_len=128,
                  attention_backend=backend, max_num_seqs=5, num_kv_blocks=64)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results.append([o.outputs[0].token_ids for o in outs])
    assert results[0] == results[1]


def test_contiguous_and_paged_cache_agree(tiny_model_dir):
    path = tiny_model_dir("llama-gqa2-tied")
    prompts = _prompts(6, seed=4)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    results = []
    for kv in ["contiguous", "paged"]:
        llm = LLM(str(path), dtype="float64", skip_tokenizer_init=True, max_model_len=128,
                  kv_cache=kv, num_kv_blocks=8 if kv == "contiguous" else 64, block_size=4)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results.append([o.outputs[0].token_ids for o in outs])
    assert results[0] == results[1]


@pytest.mark.parametrize("damage, message", [
    ("drop", "missing tensor"),
    ("reshape", "has shape"),
    ("extra", "has no place"),
])
def test_bad_checkpoint_tensors_are_named(tiny_model_dir, tmp_path, damage, message):
    import shutil

    from safetensors.torch import load_file, save_file

    from folo_edu.models.loader import ModelSourceError

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2-bias-gqa4"), folder)
    state = load_file(folder / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.bias"
    if damage == "drop":
        del state[name]
    elif damage == "reshape":
        state[name] = torch.zeros(3)
    else:
        state["model.layers.1.self_attn.extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelSourceError, match=message) as err:
        load_model(folder, load_hf_config(folder), get_backend("sdpa"), torch.float32,
                   torch.device("cpu"))
    assert ("qkv_proj" in str(err.value) or "k_proj" in str(err.value)
            or "extra" in str(err.value))
