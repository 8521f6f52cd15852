"""M7: RTN and GPTQ on single layers, the Hugging Face GPTQ layout, and bad input.

The packing test packs with its own bit-level packer written from the published layout
(not the package's), so a mistake shared by pack and unpack cannot hide.
"""
from __future__ import annotations

import pytest
import torch

from folo_edu.quantization.methods import gptq, gptq_reference, rtn
from folo_edu.quantization.packing import dequantize_gptq, pack, unpack
from folo_edu.quantization.quant_config import GPTQConfig


def _layer(out_f=48, in_f=256, tokens=800, seed=0):
    """A weight and correlated calibration inputs with uneven feature scales."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    mix = torch.randn(in_f, in_f, generator=g, dtype=torch.float64) / in_f ** 0.5
    x = mix @ torch.randn(in_f, tokens, generator=g, dtype=torch.float64)
    x *= torch.rand(in_f, 1, generator=g, dtype=torch.float64) * 3
    return w, x, 2 * x @ x.T / tokens


def _output_error(qw, w, x):
    return ((qw.dequantize() - w) @ x).pow(2).mean().item()


CONFIGS = [GPTQConfig(4, 128), GPTQConfig(4, 32, sym=False), GPTQConfig(3, 64, desc_act=True,
                                                                         sym=False),
           GPTQConfig(2, -1, sym=False), GPTQConfig(8, 16, desc_act=True, sym=False),
           GPTQConfig(4, 96, sym=False)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_lazy_batch_gptq_equals_the_reference(cfg):
    w, x, h = _layer()
    fast, ref = gptq(w, h, cfg), gptq_reference(w, h, cfg)
    differ = (fast.q != ref.q).float().mean().item()
    if cfg.sym:
        # A symmetric grid puts a group's largest weight exactly on a rounding tie, so
        # float noise may flip it; nothing else may differ.
        assert differ < 0.002
    else:
        assert differ == 0
        torch.testing.assert_close(fast.scales, ref.scales, rtol=1e-12, atol=0)
    assert torch.equal(fast.g_idx, ref.g_idx)
    assert _output_error(fast, w, x) == pytest.approx(_output_error(ref, w, x), rel=1e-3)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_gptq_beats_rtn_on_the_calibration_data(cfg):
    w, x, h = _layer(seed=1)
    assert _output_error(gptq(w, h, cfg), w, x) < _output_error(rtn(w, cfg), w, x)


def test_act_order_groups_follow_the_permutation():
    w, x, h = _layer()
    qw = gptq(w, h, GPTQConfig(4, 32, desc_act=True))
    order = torch.argsort(torch.diag(h), descending=True)
    assert torch.equal(qw.g_idx[order], torch.arange(256) // 32)  # groups in act order


def _pack_by_the_book(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack columns of ``values`` [n, cols] as the published layout says: value j of a
    column at bits j*bits.. of a little-endian stream of 32-bit words."""
    n, cols = values.shape
    words = [[0] * cols for _ in range(n * bits // 32)]
    for j in range(n):
        for c in range(cols):
            for b in range(bits):
                if (int(values[j, c]) >> b) & 1:
                    pos = j * bits + b
                    words[pos // 32][c] |= 1 << (pos % 32)
    signed = [[v - (1 << 32) if v >= 1 << 31 else v for v in row] for row in words]
    return torch.tensor(signed, dtype=torch.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_loader_reads_a_checkpoint_packed_by_the_book(bits):
    g = torch.Generator().manual_seed(bits)
    in_f, out_f, gs = 64, 32, 16
    q = torch.randint(0, 1 << bits, (in_f, out_f), generator=g)
    zeros = torch.randint(1, 1 << bits, (in_f // gs, out_f), generator=g)
    scales = torch.rand(in_f // gs, out_f, generator=g).to(torch.float16) + 0.01
    g_idx = torch.arange(in_f, dtype=torch.int32) // gs
    qweight = _pack_by_the_book(q, bits)                      # along the input dimension
    qzeros = _pack_by_the_book((zeros - 1).T, bits).T         # along the output, zero - 1
    assert torch.equal(pack(q, bits, 0), qweight)             # the package agrees
    assert torch.equal(unpack(qzeros, bits, 1), zeros - 1)
    w = dequantize_gptq(qweight, qzeros, scales, g_idx, bits, torch.float64)
    expected = ((q - zeros[g_idx.long()]) * scales[g_idx.long()].double()).T
    assert torch.equal(w, expected)


@pytest.mark.parametrize("kw,match", [
    ({"bits": 5}, r"bits=5: expected one of 2, 3, 4, 8"),
    ({"bits": True}, r"bits=True"),
    ({"group_size": 0}, r"group_size=0: expected an int >= 1, or -1"),
    ({"damp_percent": 0}, r"damp_percent=0: expected a float in \(0, 1\)"),
])
def test_bad_quantization_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTQConfig(**kw)


@pytest.mark.parametrize("d,exc,match", [
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, ValueError, "quant_method='awq'"),
    ({"quant_method": "gptq", "group_size": 128}, ValueError, "bits=None: expected a value"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "gptq_v2"},
     ValueError, "checkpoint_format='gptq_v2'"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": "yes"}, TypeError,
     "sym='yes'")])
def test_bad_quantization_config_in_a_checkpoint(d, exc, match):
    with pytest.raises(exc, match=match):
        GPTQConfig.from_hf(d)


def test_group_size_larger_than_the_layer_is_refused():
    with pytest.raises(ValueError, match="group_size=512: expected at most the layer's 256"):
        rtn(torch.randn(8, 256, dtype=torch.float64), GPTQConfig(4, 512))


# --- layer-by-layer calibration (calibrate.py) ---------------------------------------

def _tiny_decoder(name="qwen3-odd-headdim"):
    from folo_edu.attention import get_backend
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config

    torch.manual_seed(0)
    model = DecoderModel(DecoderSpec(tiny_hf_config(name)), get_backend("sdpa"))
    model.init_rotary(torch.device("cpu"))
    return model.eval()


@pytest.mark.parametrize("name", ["llama-gqa2-tied", "qwen2-bias-gqa4", "qwen3-odd-headdim"])
def test_layer_steps_is_the_layer_forward(name):
    from folo_edu.quantization.calibrate import LINEARS, layer_forward, layer_steps

    model = _tiny_decoder(name)
    x = torch.randn(9, model.spec.hidden_size)
    cs = model.rotary.lookup(torch.arange(9), torch.float32)
    with torch.no_grad():
        steps, names = layer_steps(model.layers[0], x, cs), []
        try:
            while True:
                names.append(next(steps)[0])
        except StopIteration as stop:
            out = stop.value
        assert names == list(LINEARS)
        assert torch.equal(out, layer_forward(model.layers[0], x, cs))


def _quantize_with_a_forward_per_map(model, samples, cfg):
    """What the single pass must equal: GPTQ's reference code's order, one forward of the
    layer per linear map (a hook grabs the map's input), each after the maps before it
    are quantized; then one more forward for the layer's outputs."""
    from folo_edu.quantization.calibrate import LINEARS, layer_forward

    xs = [model.embed_tokens(s) for s in samples]
    css = [model.rotary.lookup(torch.arange(len(s)), torch.float32) for s in samples]
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LINEARS:
            module, seen = layer.get_submodule(name), []
            handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            for x, cs in zip(xs, css):
                layer_forward(layer, x, cs)
            handle.remove()
            h = sum((2 * s.t() @ s).double() for s in seen) / sum(len(s) for s in seen)
            qw = gptq(module.weight, h, cfg)
            qw.scales = qw.scales.to(torch.float16).double()
            module.weight.copy_(qw.dequantize().float())
            out[f"layers.{i}.{name}"] = qw
        xs = [layer_forward(layer, x, cs) for x, cs in zip(xs, css)]
    return out


@pytest.mark.parametrize("name", ["llama-gqa2-tied", "qwen2-bias-gqa4"])
def test_one_pass_calibration_equals_a_forward_per_map(name):
    from folo_edu.quantization.calibrate import quantize_model

    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(3, 250, (n,), generator=g) for n in (17, 9, 30)]
    cfg = GPTQConfig(4, 16)
    with torch.no_grad():
        expected = _quantize_with_a_forward_per_map(_tiny_decoder(name), samples, cfg)
    got = quantize_model(_tiny_decoder(name), samples, cfg, "gptq")
    assert list(got) == list(expected)
    for key in expected:  # the same integers: every map saw the same inputs
        assert torch.equal(got[key].q, expected[key].q), key
        torch.testing.assert_close(got[key].scales, expected[key].scales, rtol=0, atol=0)


# --- calibration text --------------------------------------------------------------

def test_docstrings_skip_tests_and_text_shared_with_the_evaluation(tmp_path):
    from folo_edu.quantization.texts import docstrings

    evaluation = ("The quick brown fox jumps over the lazy dog while the cat sleeps on "
                  "the warm windowsill all afternoon long. ")
    first, second = evaluation[:40], evaluation[40:100]  # each shorter than a 64-char run

    def module(path, *docs):
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def f{i}():\n    {d!r}\n" for i, d in enumerate(docs))
        path.write_text(body, encoding="utf-8")

    keep = "A docstring of its own, long enough to be kept as calibration text."
    module(tmp_path / "a.py", keep, "Copied:   " + evaluation.upper().lower())
    module(tmp_path / "b.py", first, second)             # shared only once joined
    module(tmp_path / "c.py", "Another docstring that is not in the evaluation text at all.")
    module(tmp_path / "test_x.py", "A test module's docstring, never calibration text here.")
    module(tmp_path / "tests" / "y.py", "A docstring under tests/, never calibration text.")
    module(tmp_path / "pydoc_data" / "z.py", "The evaluation text's own package is skipped.")
    module(tmp_path / "d.py", "short")                    # under min_chars
    assert docstrings(tmp_path, exclude=evaluation, min_chars=20) == [
        keep, "Another docstring that is not in the evaluation text at all."]
    assert len(docstrings(tmp_path, min_chars=20)) == 5  # nothing excluded: a, a, b, b, c
