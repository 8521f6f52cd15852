"""M1: the helpers behind notebooks 00, 02 and 03 (folo_edu.viz.sampling, viz.forward)
and their exercise checks (folo_edu.labs.m1_sampling, labs.m1_forward)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from folo_edu import LLM, SamplingParams
from folo_edu.attention import get_backend
from folo_edu.labs.m1_forward import check_causal_mask
from folo_edu.labs.m1_sampling import check_stop_params
from folo_edu.models.loader import load_hf_config
from folo_edu.models.weights import load_model
from folo_edu.sample import apply_min_p, apply_temperature, apply_top_k, apply_top_p
from folo_edu.viz.forward import (PUBLISHED_SHAPES, AttentionShape, forward_positions,
                                  layer_forward, measure_kv_cache_speedup, next_token_logits,
                                  plot_kv_bytes_per_token, plot_kv_cache_speedup,
                                  plot_step_times, private_kv_cache, sequence_metadata,
                                  time_engine_steps, time_next_token)
from folo_edu.viz.sampling import (entropy_bits, final_probs, measure_processor_latency,
                                   plot_before_after, plot_processor_effects,
                                   plot_processor_latency, plot_sampling_filters, probs_of,
                                   sampler_stages, sampling_explorer, token_labels)

VOCAB = 256


@pytest.fixture(scope="module")
def tiny64(tiny_model_dir):
    """A float64 tiny Llama: our DecoderModel and transformers' model of the same folder."""
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama-gqa2-tied", dtype=torch.float64)
    ours = load_model(path, load_hf_config(path), get_backend("naive"), torch.float64,
                      torch.device("cpu"))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    return path, ours, hf


def _ids(n, seed=0):
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ---- viz.forward ------------------------------------------------------------------------
def test_next_token_logits_equal_transformers(tiny64):
    _, ours, hf = tiny64
    ids = _ids(17)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(next_token_logits(ours, ids), ref)
    with pytest.raises(ValueError, match="empty"):
        next_token_logits(ours, [])


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_layer_forward_equals_transformers_layer(tiny64, backend):
    _, ours, hf = tiny64
    ids = torch.tensor([_ids(11)])
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
    ours.set_attention_backend(get_backend(backend))
    try:
        for i in range(len(ours.layers)):
            out = layer_forward(ours, i, hidden[i][0], torch.arange(11))
            if i + 1 < len(ours.layers):  # transformers' last entry is after the final norm
                torch.testing.assert_close(out, hidden[i + 1][0])
            else:
                torch.testing.assert_close(ours.norm(out), hidden[i + 1][0])
    finally:
        ours.set_attention_backend(get_backend("naive"))


def test_private_cache_restores_the_engine_cache(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama-gqa2-tied")), skip_tokenizer_init=True,
              max_model_len=64, num_kv_blocks=8)
    model = llm.llm_engine.model_runner.model
    before = [(layer.self_attn.k_cache, layer.self_attn.v_cache) for layer in model.layers]
    snapshot = llm.llm_engine.model_runner.kv_cache.clone()
    logits = next_token_logits(model, _ids(10))
    assert logits.shape == (VOCAB,)
    for layer, (k, v) in zip(model.layers, before):
        assert layer.self_attn.k_cache is k and layer.self_attn.v_cache is v
    assert torch.equal(llm.llm_engine.model_runner.kv_cache, snapshot)  # the engine's cache untouched
    # ... and the engine's own greedy token is the argmax of these logits.
    out = llm.generate({"prompt_token_ids": _ids(10)}, SamplingParams(temperature=0, max_tokens=1),
                       use_tqdm=False)[0]
    assert out.outputs[0].token_ids == [int(logits.argmax())]


def test_decode_with_cache_equals_full_recompute(tiny64):
    _, ours, _ = tiny64
    ids, n = _ids(20), 20
    with torch.no_grad():
        with private_kv_cache(ours, n):
            full = ours.compute_logits(forward_positions(ours, ids, 0, n))
        with private_kv_cache(ours, n):
            forward_positions(ours, ids[:12], 0, n)
            steps = [ours.compute_logits(forward_positions(ours, ids[p:p + 1], p, n))
                     for p in range(12, n)]
    torch.testing.assert_close(torch.cat(steps), full[12:])


def test_sequence_metadata_rejects_positions_outside_the_block():
    meta = sequence_metadata(5, 6, 8)
    assert meta.num_decodes == 1 and meta.seq_lens == [6] and meta.slot_mapping.tolist() == [5]
    with pytest.raises(ValueError, match="block_size=8"):
        sequence_metadata(4, 9, 8)


def test_kv_cache_timing_and_plot(tiny64):
    _, ours, _ = tiny64
    assert time_next_token(ours, 8, use_cache=True, repeats=1) > 0
    with pytest.raises(ValueError, match="context_len=1"):
        time_next_token(ours, 1, use_cache=False)
    result = measure_kv_cache_speedup(ours, [8, 32], repeats=1)
    assert result["context"].tolist() == [8, 32]
    assert (result["with_cache"] > 0).all() and (result["without_cache"] > 0).all()
    fig = plot_kv_cache_speedup(result)
    assert len(fig.axes[0].lines) == 4  # the two medians, and every run as dots
    assert result["with_cache_runs"].shape == (2, 1)


def test_time_engine_steps_has_one_prefill_then_decodes(tiny_model_dir):
    llm = LLM(str(tiny_model_dir("llama-gqa2-tied")), skip_tokenizer_init=True,
              max_model_len=64, num_kv_blocks=8)
    steps = time_engine_steps(llm.llm_engine, {"prompt_token_ids": _ids(6)},
                              SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert [s["kind"] for s in steps] == ["prefill"] + ["decode"] * 4
    assert [s["tokens"] for s in steps] == [6, 1, 1, 1, 1]
    assert all(s["seconds"] > 0 for s in steps)
    assert not llm.llm_engine.has_unfinished_requests()
    fig = plot_step_times(steps)
    assert len(fig.axes[0].patches) == 5
    assert "prefill: 6 prompt tokens" in " ".join(
        t.get_text() for t in fig.axes[0].get_legend().get_texts())
    llm.llm_engine.add_request("busy", {"prompt_token_ids": [5]}, SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="idle engine"):
        time_engine_steps(llm.llm_engine, {"prompt_token_ids": [5]}, SamplingParams())


def test_attention_shapes_and_kv_plot():
    smol = AttentionShape("SmolLM2-135M", 30, 9, 3, 64)
    assert smol.kv_bytes_per_token() == 23040 and smol.mha_kv_bytes_per_token() == 3 * 23040
    llama3 = next(s for s in PUBLISHED_SHAPES if s.name == "Llama-3-8B")
    assert llama3.kv_bytes_per_token() == 131072
    fig = plot_kv_bytes_per_token(PUBLISHED_SHAPES)
    assert len(fig.axes[0].patches) == 2 * len(PUBLISHED_SHAPES)
    assert fig.axes[0].get_yscale() == "log"


# ---- viz.sampling -------------------------------------------------------------------------
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], dtype=torch.float64)


def test_stages_follow_the_sampler_order_and_call_the_package():
    stages = sampler_stages(LOGITS, temperature=0.7, min_p=0.05, top_k=5, top_p=0.8)
    assert [name for name, _ in stages] == ["raw", "temperature 0.7", "min_p 0.05", "top_k 5",
                                            "top_p 0.8"]
    f64 = torch.float64  # the Sampler builds per-row values in the logits' dtype
    x = apply_temperature(LOGITS[None], torch.tensor([0.7], dtype=f64))
    x = apply_min_p(x, torch.tensor([0.05], dtype=f64))
    x = apply_top_k(x, torch.tensor([5]))
    x = apply_top_p(x, torch.tensor([0.8], dtype=f64))
    assert torch.equal(stages[-1][1], x[0])
    assert [name for name, _ in sampler_stages(LOGITS)] == ["raw"]  # everything off


def test_stages_penalties_min_tokens_and_greedy():
    stages = sampler_stages(LOGITS, prompt_ids=[0], output_ids=[1, 1], frequency_penalty=0.5,
                            min_tokens=5, stop_ids={2}, temperature=0)
    assert [name for name, _ in stages] == ["raw", "penalties", "min_tokens", "greedy (argmax)"]
    penalized = stages[1][1]
    assert penalized[1] == pytest.approx(1.5 - 2 * 0.5) and penalized[0] == 2.0
    assert stages[2][1][2] == float("-inf")
    p = probs_of(stages[-1][1])
    assert p[0] == 1.0 and p.sum() == 1.0
    assert len(sampler_stages(LOGITS, output_ids=[1] * 5, min_tokens=5)) == 1  # long enough
    with pytest.raises(ValueError, match="one row"):
        sampler_stages(LOGITS[None])


def test_final_probs_entropy_and_labels():
    p = final_probs(LOGITS, top_k=2)
    assert (p > 0).sum() == 2 and p.sum() == pytest.approx(1.0)
    assert entropy_bits(np.array([0.5, 0.5, 0.0])) == pytest.approx(1.0)
    assert entropy_bits(np.array([1.0])) == 0.0

    class Tok:
        def decode(self, ids):
            return {0: " a", 1: "\n", 2: ""}[ids[0]]

    assert token_labels(Tok(), [0, 1, 2]) == ["␣a", "\\n", "<2>"]


def test_sampling_plots_draw_the_shown_tokens():
    labels = [f"t{i}" for i in range(len(LOGITS))]
    after = sampler_stages(LOGITS, top_k=3)[-1][1]
    fig = plot_before_after(LOGITS, after, labels, top=6, title="top_k=3")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels[:6]
    assert "3 tokens possible" in ax.get_title()
    removed = [line for line in ax.lines if line.get_marker() == "x"][0]
    assert len(removed.get_xdata()) == 3  # t3, t4, t5 of the 6 shown
    fig = plot_processor_effects(LOGITS, {"a": after, "b": LOGITS, "c": after}, labels, ncols=2)
    assert sum(a.get_visible() for a in fig.axes) == 3
    fig = plot_sampling_filters(LOGITS, labels, temperature=0.5, top_p=0.9)
    assert "temperature 0.5 -> top_p 0.9" in fig.axes[0].get_title()


def test_explorer_is_a_widget_over_the_static_figure():
    widgets = pytest.importorskip("ipywidgets")
    box = sampling_explorer(LOGITS, [f"t{i}" for i in range(len(LOGITS))])
    assert isinstance(box, widgets.VBox)
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["temperature", "top_k (0 off)", "top_p"]
    sliders[0].value = 0.5  # fires the callback; it must not raise


def test_processor_latency_and_plot():
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
    times = measure_processor_latency(logits, repeats=1)
    assert list(times) == ["penalties", "min_tokens", "temperature", "min_p", "top_k", "top_p",
                           "full sort (textbook top-p)", "whole Sampler call"]
    assert all(t > 0 for t in times.values())
    fig = plot_processor_latency(times, 2, 1000)
    assert len(fig.axes[0].patches) == len(times)


# ---- labs.m1_sampling (the top-p lab: tests/unit/test_02_top_p_lab.py) ------------------
def test_check_stop_params(capsys):
    good = SamplingParams(temperature=0, max_tokens=20, stop=".",
                          include_stop_str_in_output=True)
    assert check_stop_params(good) is True
    assert check_stop_params(None) is False
    with pytest.raises(AssertionError, match="temperature=0"):
        check_stop_params(good.clone(temperature=0.7))
    with pytest.raises(AssertionError, match="max_tokens=16"):
        check_stop_params(good.clone(max_tokens=16))
    with pytest.raises(AssertionError, match="include_stop_str_in_output"):
        check_stop_params(good.clone(include_stop_str_in_output=False))
    with pytest.raises(AssertionError, match="no '.'"):
        check_stop_params(good.clone(stop="\n"))
    with pytest.raises(AssertionError, match="SamplingParams"):
        check_stop_params({"temperature": 0})


# ---- labs.m1_forward (the decode-step lab: tests/unit/test_03_decode_step_lab.py) ---------
def test_check_causal_mask(capsys):
    def right(q, s):
        return torch.arange(s)[None, :] <= torch.arange(s - q, s)[:, None]

    assert check_causal_mask(right) is True
    assert check_causal_mask(lambda q, s: right(q, s).int()) is True  # 1/0 is accepted
    assert check_causal_mask(None) is False
    with pytest.raises(AssertionError, match="LAST query_len positions"):
        check_causal_mask(lambda q, s: torch.ones(q, s, dtype=torch.bool).tril())
    with pytest.raises(AssertionError, match="attend to itself"):
        check_causal_mask(lambda q, s: torch.arange(s)[None, :] < torch.arange(s - q, s)[:, None])
    with pytest.raises(AssertionError, match="may attend"):
        check_causal_mask(lambda q, s: ~right(q, s))
    with pytest.raises(AssertionError, match="shape"):
        check_causal_mask(lambda q, s: right(s, s))
