"""Notebook 09's lab check (4-bit packing through the real loader) and its figures."""
from __future__ import annotations

import pytest
import torch

from folo_edu.labs import LabCheckFailed
from folo_edu.labs import m7_gptq as lab
from folo_edu.quantization import GPTQConfig, kernels, packing
from folo_edu.quantization.methods import rtn
from folo_edu.viz import quant as vq


def test_reference_packer_matches_the_package_and_the_layout():
    values = torch.randint(0, 16, (64, 24), generator=torch.Generator().manual_seed(1))
    words = lab.reference_pack_int4(values)
    assert words.dtype == torch.int32 and torch.equal(words, packing.pack(values, 4, dim=0))
    assert torch.equal(lab.reference_unpack_int4(words), values)
    # by the book: values 0..7 -> 0x76543210; a top nibble of 9 makes the word negative
    assert lab.reference_pack_int4(torch.arange(8).view(8, 1)).item() == 0x76543210
    assert lab.reference_pack_int4(torch.tensor([0] * 7 + [9]).view(8, 1)).item() == \
        0x90000000 - 2**32


def test_unanswered_is_not_answered(capsys):
    assert lab.check_int4_packing(None, lab.reference_unpack_int4) is False
    assert "Not answered yet" in capsys.readouterr().out


def test_the_reference_passes_in_the_engine_and_the_loader_is_restored(capsys):
    original = packing.unpack
    assert lab.check_int4_packing(lab.reference_pack_int4, lab.reference_unpack_int4) is True
    out = capsys.readouterr().out
    assert out.startswith("Correct:") and "reference tokens" in out
    assert packing.unpack is original and kernels.unpack is original


def _big_endian(values):
    return lab.reference_pack_int4(values.reshape(-1, 8, values.shape[1]).flip(1)
                                   .reshape(values.shape))


def _shift_without_mask(words):
    w = words.to(torch.int64) & 0xFFFFFFFF
    return torch.stack([w >> (4 * j) for j in range(8)], 1).reshape(-1, words.shape[1])


def _arithmetic_shift(words):  # masks all but the top nibble, which keeps the sign
    vals = [(words >> (4 * j)) & 0xF for j in range(7)] + [words >> 28]
    return torch.stack(vals, 1).reshape(-1, words.shape[1]).to(torch.int64)


@pytest.mark.parametrize("pack, unpack, hint", [
    (lambda v: lab.reference_pack_int4(v.t().contiguous()).t(), lab.reference_unpack_int4,
     "along dim 1"),
    (_big_endian, lab.reference_unpack_int4, "TOP nibble"),
    (lambda v: lab.reference_pack_int4(v).to(torch.int64) & 0xFFFFFFFF,
     lab.reference_unpack_int4, "expected torch.int32"),
    (lab.reference_pack_int4, _shift_without_mask, "& 0xF"),
    (lab.reference_pack_int4, _arithmetic_shift, "sign bit"),
    (lab.reference_pack_int4, lambda w: lab.reference_unpack_int4(w).reshape(
        -1, 8, w.shape[1]).flip(1).reshape(-1, w.shape[1]), "reversed"),
])
def test_wrong_packings_get_a_hint_naming_the_bug(pack, unpack, hint):
    with pytest.raises(LabCheckFailed, match=hint) as exc:
        lab.check_int4_packing(pack, unpack)
    assert "0x76543210" not in str(exc.value)  # no spoiler of the packed words


def test_viz_group_error_and_figures():
    w = torch.randn(32, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    qw = rtn(w, GPTQConfig(bits=4, group_size=32))
    errs = vq.group_error(w, qw.dequantize(), qw.g_idx)
    assert len(errs) == 3 and all(e > 0 for e in errs)  # 80 = 32 + 32 + a short 16
    assert errs[0] == pytest.approx((w - qw.dequantize())[:, :32].abs().mean().item())
    assert vq.plot_weight_histograms(w, qw.dequantize(), "t") is not None
    assert vq.plot_group_error({"g32": errs}) is not None
    assert vq.plot_output_error({"RTN 4-bit": torch.rand(10), "GPTQ 4-bit": torch.rand(10)})
    result = {"runs": {
        "fp32": {"method": "fp32", "perplexity": 10.0, "fp32_bytes": 100},
        "rtn-4-g128": {"method": "rtn", "bits": 4, "group_size": 128, "perplexity": 12.0,
                       "serving_bytes": 14, "packed_bytes": 13, "fp32_bytes": 100},
        "gptq-4-g128": {"method": "gptq", "bits": 4, "group_size": 128, "perplexity": 11.0,
                        "serving_bytes": 14, "packed_bytes": 13, "fp32_bytes": 100},
        "gptq-2-g128": {"name": "gptq-2-g128", "error": "exit code 1"}}}
    rows = vq.sweep_rows(result)
    assert [r["name"] for r in rows] == ["fp32", "rtn-4-g128", "gptq-4-g128"]
    assert vq.plot_ppl_vs_bits(rows, live={"live": (4, 11.5)}) is not None
    assert vq.plot_memory_vs_bits(rows) is not None


def test_layer_inputs_are_what_the_layer_sees(tmp_path):
    from folo_edu.quantization.calibrate import hessian

    from folo_edu.attention import get_backend
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config

    torch.manual_seed(0)
    model = DecoderModel(DecoderSpec(tiny_hf_config("llama-gqa2-tied")), get_backend("sdpa"))
    model.init_rotary(torch.device("cpu"))
    model.eval()
    samples = [torch.randint(3, 200, (12,)), torch.randint(3, 200, (7,))]
    x = vq.layer_inputs(model, 1, "mlp.down_proj", samples).double()
    assert x.shape == (19, model.spec.intermediate_size)
    layer0 = model.layers[0]
    from folo_edu.quantization.calibrate import layer_forward

    with torch.no_grad():
        xs = [layer_forward(layer0, model.embed_tokens(s),
                            model.rotary.lookup(torch.arange(len(s)), torch.float32))
              for s in samples]
        cs = [model.rotary.lookup(torch.arange(len(s)), torch.float32) for s in samples]
        h = hessian(model.layers[1], model.layers[1].mlp.down_proj, xs, cs)
    torch.testing.assert_close(2 * x.T @ x / len(x), h, rtol=1e-5, atol=1e-6)
