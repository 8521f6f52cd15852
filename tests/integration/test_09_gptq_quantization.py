"""M7 end to end: quantize a checkpoint, load it with LLM, compare with transformers.

The oracle for a quantized checkpoint is transformers running the same model with each
quantized weight replaced by its dequantized value (float64, so tokens match exactly).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from folo_edu import LLM, SamplingParams
from folo_edu.models.loader import ModelSourceError
from folo_edu.quantization import perplexity, quantize
from folo_edu.quantization.packing import dequantize_gptq

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _samples(n=6, length=48):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 256, (length,), generator=g).tolist() for _ in range(n)]


def _hf_with_dequantized_weights(source, quantized_dir, bits):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float64).eval()
    state = load_file(str(quantized_dir / "model.safetensors"))
    with torch.no_grad():
        for i, layer in enumerate(hf.model.layers):
            for name in PROJ:
                base = f"model.layers.{i}.{name}"
                w = dequantize_gptq(state[f"{base}.qweight"], state[f"{base}.qzeros"],
                                    state[f"{base}.scales"], state[f"{base}.g_idx"], bits,
                                    torch.float64)
                layer.get_submodule(name).weight.copy_(w)
    return hf


@pytest.mark.parametrize("name,method,bits,group_size,desc_act", [
    ("llama-gqa2-tied", "gptq", 4, 16, False), ("qwen2-bias-gqa4", "gptq", 8, 32, True),
    ("qwen3-odd-headdim", "rtn", 4, -1, False), ("llama-mha-untied-rope3", "gptq", 2, 16, True)])
def test_quantized_checkpoint_equals_transformers_on_its_dequantized_weights(
        tiny_model_dir, tmp_path, name, method, bits, group_size, desc_act):
    source = tiny_model_dir(name)
    out = quantize(str(source), tmp_path / "q", method=method, bits=bits, group_size=group_size,
                   desc_act=desc_act, calibration_text=_samples(), progress=None)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "gptq", "bits": bits, "group_size": group_size,
                      "desc_act": desc_act, "sym": True, "damp_percent": 0.01,
                      "checkpoint_format": "gptq"}
    llm = LLM(str(out), dtype="float64", skip_tokenizer_init=True, max_model_len=128)
    assert llm.llm_engine.model_runner.model.layers[0].mlp.down_proj.kernel == "reference"
    hf = _hf_with_dequantized_weights(source, out, bits)
    for prompt in ([5, 6, 7], [100, 3, 9, 42, 17]):
        got = llm.generate({"prompt_token_ids": prompt}, GREEDY, use_tqdm=False)[0]
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert got.outputs[0].token_ids == ref


def test_the_cpu_int4_path_agrees_with_the_reference(tiny_model_dir, tmp_path):
    out = quantize(str(tiny_model_dir("qwen2-bias-gqa4")), tmp_path / "q", bits=4,
                   group_size=16, calibration_text=_samples(), progress=None)
    fast = LLM(str(out), dtype="float32", skip_tokenizer_init=True, max_model_len=128)
    layer = fast.llm_engine.model_runner.model.layers[0].self_attn.qkv_proj
    assert layer.kernel == "int4-cpu", layer.kernel_reason
    x = torch.randn(5, layer.in_features)
    ref = torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32), layer.bias)
    torch.testing.assert_close(layer(x), ref, rtol=2e-2, atol=2e-2)  # bfloat16 compute
    # 4-bit payload plus per-group tables: far below float32 even for this tiny layer
    assert layer.weight_bytes() < 0.4 * layer.in_features * layer.out_features * 4


def test_bad_quantize_calls_fail_before_any_work(tiny_model_dir, tmp_path):
    path = str(tiny_model_dir("llama-gqa2-tied"))
    cases = [({"method": "awq"}, "method='awq'"), ({"bits": 6}, "bits=6"),
             ({"num_samples": 0}, "num_samples=0"), ({"out_dir": None}, "out_dir=None"),
             ({"group_size": 4096}, "group_size=4096")]
    for kw, match in cases:
        args = {"out_dir": tmp_path / "x", "calibration_text": _samples(), "group_size": 16,
                **kw}
        with pytest.raises(ValueError, match=match):
            quantize(path, progress=None, **args)
    with pytest.raises(ValueError, match="bits=3: a layer of this model has 48 features"):
        quantize(str(tiny_model_dir("qwen3-odd-headdim")), tmp_path / "x", bits=3,
                 group_size=16, calibration_text=_samples(), progress=None)
    assert not (tmp_path / "x").exists()


def test_calibration_text_shorter_than_one_sample(monkeypatch, tmp_path):
    from folo_edu.quantization.api import calibration_samples

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return list(range(len(text.split())))

    with pytest.raises(ValueError, match="calibration_text has 3 tokens; expected at least "
                                         "seq_len=512"):
        calibration_samples(Tok(), "only three words", 4, 512)


@pytest.mark.parametrize("damage,match", [
    ("drop", r"tensor model.layers.0.self_attn.q_proj.scales is missing"),
    ("reshape", r"tensor model.layers.0.self_attn.q_proj.qweight has shape"),
    ("method", r"quant_method='awq'")])
def test_a_broken_gptq_checkpoint_is_refused_clearly(tiny_model_dir, tmp_path, damage, match):
    out = quantize(str(tiny_model_dir("llama-gqa2-tied")), tmp_path / "q", method="rtn",
                   bits=4, group_size=16, progress=None)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    state = load_file(str(broken / "model.safetensors"))
    if damage == "drop":
        del state["model.layers.0.self_attn.q_proj.scales"]
    elif damage == "reshape":
        state["model.layers.0.self_attn.q_proj.qweight"] = \
            state["model.layers.0.self_attn.q_proj.qweight"][:-1].contiguous()
    else:
        config = json.loads((broken / "config.json").read_text())
        config["quantization_config"]["quant_method"] = "awq"
        (broken / "config.json").write_text(json.dumps(config))
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelSourceError, match=match):
        LLM(str(broken), dtype="float64", skip_tokenizer_init=True, max_model_len=64)


def test_perplexity_equals_transformers_on_the_default_model():
    from transformers import AutoModelForCausalLM

    from folo_edu.models.default_model import download_model
    from folo_edu.quantization.texts import evaluation_text

    llm = LLM(None, dtype="float32", max_model_len=512)
    text = evaluation_text()[:6000]
    ours = perplexity(llm, text, window=256, max_windows=2)
    hf = AutoModelForCausalLM.from_pretrained(download_model(quiet=True),
                                              dtype=torch.float32).eval()
    ids = llm.get_tokenizer().encode(text, add_special_tokens=False)
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in (0, 256):
            w = torch.tensor([ids[start:start + 256]])
            lp = torch.log_softmax(hf(w).logits[0].double(), -1)
            nll -= lp[torch.arange(255), w[0, 1:]].sum().item()
            count += 255
    assert ours == pytest.approx(torch.tensor(nll / count).exp().item(), rel=1e-4)


def test_the_default_calibration_text_shares_no_run_with_the_evaluation_text():
    from folo_edu.quantization import texts

    calibration, evaluation = texts.docstring_text(), texts.evaluation_text()
    assert len(calibration) > 500_000  # the stdlib's docstrings, not an empty filter
    assert not texts.shares_a_run(calibration, texts._runs(evaluation))
    assert texts.shares_a_run(evaluation[:5000], texts._runs(evaluation))  # the check works
