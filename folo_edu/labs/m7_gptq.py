"""Checks for notebooks/09_gptq_quantization.ipynb (milestone M7).

The lab: the learner writes 4-bit packing in Hugging Face's GPTQ layout,

    pack_int4(values)   int [n, m], values 0..15  ->  int32 [n / 8, m]
    unpack_int4(words)  int32 [n / 8, m]           ->  int64 [n, m]

packed along dim 0: value j (0..7) of each group of 8 rows sits at bits 4j .. 4j+3 of
one int32 word (value 0 in the lowest nibble; a word whose top nibble is >= 8 is negative).
A GPTQ checkpoint packs ``qweight`` this way along the input dimension ([in, out] ->
[in / 8, out]) and ``qzeros`` (the zero points minus one) along the output dimension.

The seams (in ``check_int4_packing`` and ``learner_checkpoint``):
  * writing: a reference 4-bit checkpoint of a tiny model is repacked tensor by tensor
    with the learner's ``pack_int4`` (qweight as is, qzeros transposed);
  * reading: ``unpack_in_loader(unpack_int4)`` makes the loader (QuantLinear's reference
    path and the int4-cpu path's repacking) unpack 4-bit tensors with the learner's
    function for the duration of a ``with`` block.
The engine then loads the learner's checkpoint and must produce the reference
checkpoint's greedy tokens.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from folo_edu.labs import LabCheckFailed, not_answered, report_pass

WHAT = "pack_int4 / unpack_int4 (Hugging Face's 4-bit GPTQ packing)"
SHIFTS = torch.arange(0, 32, 4)


# ---- the reference, written from the layout (the package's general packer is packing.py)
def reference_pack_int4(values: torch.Tensor) -> torch.Tensor:
    v = values.to(torch.int64).reshape(-1, 8, *values.shape[1:])
    words = (v << SHIFTS.view(1, 8, *[1] * (v.dim() - 2))).sum(dim=1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def reference_unpack_int4(words: torch.Tensor) -> torch.Tensor:
    w = words.to(torch.int64).unsqueeze(1)
    vals = (w >> SHIFTS.view(1, 8, *[1] * (w.dim() - 2))) & 0xF
    return vals.reshape(-1, *words.shape[1:])


def _big_endian(values):  # value j at bits 4 * (7 - j)
    v = values.reshape(-1, 8, *values.shape[1:]).flip(1).reshape(values.shape)
    return reference_pack_int4(v)


def _cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("random [64, 24]", torch.randint(0, 16, (64, 24), generator=g)),
        ("values 0..7 down one column", torch.arange(8).view(8, 1)),
        ("every value 15 (the word is -1 as int32)", torch.full((16, 3), 15)),
        ("a top nibble >= 8 (value 7 of the word is 9)",
         torch.tensor([1, 2, 3, 4, 5, 6, 7, 9]).view(8, 1)),
    ]


def _check_pack(pack_int4) -> None:
    for name, values in _cases():
        expected = reference_pack_int4(values)
        try:
            got = pack_int4(values.clone())
        except Exception as e:  # the learner's error, shown briefly
            raise LabCheckFailed(f"pack_int4 on {name} raised {type(e).__name__}: {e}") from None
        if not isinstance(got, torch.Tensor):
            raise LabCheckFailed(f"pack_int4 returned a {type(got).__name__}; expected a tensor")
        n, m = values.shape
        if tuple(got.shape) != (n // 8, m):
            along_out = m % 8 == 0 and tuple(got.shape) == (n, m // 8)
            raise LabCheckFailed(
                f"pack_int4 on {name}: shape {tuple(got.shape)}; expected ({n // 8}, {m})"
                + ("; you packed along dim 1 (the output dimension): GPTQ packs qweight "
                   "along the INPUT dimension, dim 0 of values [in, out]" if along_out else
                   ": 8 values of dim 0 make one word"))
        if got.dtype != torch.int32:
            wraps = torch.equal((got.to(torch.int64) & 0xFFFFFFFF),
                                expected.to(torch.int64) & 0xFFFFFFFF)
            raise LabCheckFailed(
                f"pack_int4: dtype {got.dtype}; expected torch.int32 (the checkpoint's words)"
                + ("; your bits are right: convert the unsigned 32-bit words to int32, "
                   "words >= 2**31 becoming negative (w - 2**32)" if wraps else ""))
        if torch.equal(got, expected):
            continue
        if torch.equal(got, _big_endian(values)):
            raise LabCheckFailed(f"pack_int4 on {name}: value 0 sits in the TOP nibble: value "
                                 "j of a word goes at bits 4*j (value 0 lowest), not 4*(7-j)")
        raise LabCheckFailed(f"pack_int4 on {name}: the words differ from the layout's; "
                             "word k of a column holds values 8k .. 8k+7 of that column, "
                             "value j shifted left by 4*j")


def _check_unpack(unpack_int4) -> None:
    for name, values in _cases():
        words = reference_pack_int4(values)
        try:
            got = unpack_int4(words.clone())
        except Exception as e:
            raise LabCheckFailed(f"unpack_int4 on {name} raised {type(e).__name__}: "
                                 f"{e}") from None
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(values.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise LabCheckFailed(f"unpack_int4 on {name}: got {shape}; expected shape "
                                 f"{tuple(values.shape)} (each word gives 8 rows, in order)")
        got = got.to(torch.int64)
        if torch.equal(got, values):
            continue
        w = words.to(torch.int64).unsqueeze(1)
        unmasked = (w >> SHIFTS.view(1, 8, 1)).reshape(values.shape)
        if torch.equal(got, unmasked) or (got > 15).any():
            raise LabCheckFailed(f"unpack_int4 on {name}: values above 15: after the shift, "
                                 "keep only the low 4 bits (& 0xF)")
        if (got < 0).any():
            raise LabCheckFailed(f"unpack_int4 on {name}: negative values: a word whose top "
                                 "nibble is >= 8 is a negative int32, and >> copies its sign "
                                 "bit; mask with & 0xF after shifting (or widen to int64 and "
                                 "& 0xFFFFFFFF first)")
        if torch.equal(got, values.reshape(-1, 8, values.shape[1]).flip(1).reshape(values.shape)):
            raise LabCheckFailed(f"unpack_int4 on {name}: the 8 values of each word come out "
                                 "reversed: value j is at bits 4*j (value 0 lowest)")
        raise LabCheckFailed(f"unpack_int4 on {name}: the values differ from the ones packed; "
                             "row 8k+j of the output is value j of word k")


# ---- the seams ----------------------------------------------------------------------------
@contextlib.contextmanager
def unpack_in_loader(unpack_int4):
    """Inside the block, the loader unpacks 4-bit GPTQ tensors with ``unpack_int4`` (both
    QuantLinear's reference path and the int4-cpu path's repacking); other bit widths use
    the package's unpack. Restores the package's on exit."""
    from folo_edu.quantization import kernels, packing

    original = packing.unpack

    def unpack(words, bits, dim):
        if bits != 4:
            return original(words, bits, dim)
        return unpack_int4(words.movedim(dim, 0).contiguous()).to(torch.int64).movedim(0, dim)

    packing.unpack, kernels.unpack = unpack, unpack
    try:
        yield
    finally:
        packing.unpack, kernels.unpack = original, original


def learner_checkpoint(reference_dir: str | Path, out_dir: str | Path, pack_int4) -> Path:
    """A copy of the 4-bit GPTQ checkpoint ``reference_dir`` whose qweight and qzeros are
    packed by ``pack_int4`` (from the reference's values, unpacked by the layout)."""
    from safetensors.torch import load_file, save_file

    ref, out = Path(reference_dir), Path(out_dir)
    config = json.loads((ref / "config.json").read_text())
    if config.get("quantization_config", {}).get("bits") != 4:
        raise ValueError(f"{ref}: expected a 4-bit GPTQ checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(ref / "model.safetensors"))
    for name, t in list(state.items()):
        if name.endswith(".qweight"):
            state[name] = pack_int4(reference_unpack_int4(t)).contiguous()
        elif name.endswith(".qzeros"):
            state[name] = pack_int4(reference_unpack_int4(t.t().contiguous())).t().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in ref.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, out / f.name)
    return out


def tiny_reference_checkpoint(workdir: str | Path) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) quantized to 4 bits, groups of 32, by RTN,
    written by the package's checkpoint writer. Built directly from our DecoderModel (no
    transformers model), so it takes well under a second."""
    from folo_edu.attention import get_backend
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config
    from folo_edu.quantization import GPTQConfig
    from folo_edu.quantization.calibrate import quantize_model
    from folo_edu.quantization.checkpoint import save_gptq_checkpoint

    workdir = Path(workdir)
    config = tiny_hf_config("llama-gqa2-tied")
    source = workdir / "tiny-llama-config"
    source.mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(source / "config.json"))
    g = torch.Generator().manual_seed(0)
    model = DecoderModel(DecoderSpec(config), get_backend("sdpa"))
    with torch.no_grad():
        for p in model.parameters():  # wide random weights: decisive greedy tokens
            p.copy_(torch.randn(p.shape, generator=g) * 0.25 if p.dim() >= 2
                    else torch.ones(p.shape))
    cfg = GPTQConfig(bits=4, group_size=32)
    quantized = quantize_model(model, [], cfg, "rtn")
    return save_gptq_checkpoint(model, quantized, cfg, source, workdir / "tiny-gptq-4bit")


def _greedy_tokens(model_dir, prompts, max_tokens=12):
    from folo_edu import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True, max_model_len=128)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    kernel = llm.llm_engine.model_runner.model.layers[0].mlp.down_proj.kernel
    return [list(o.outputs[0].token_ids) for o in outs], kernel


def check_int4_packing(pack_int4, unpack_int4, reference_dir: str | Path | None = None) -> bool:
    """(1) hand-made cases against the layout, naming the usual bugs; (2) the learner's
    packer writes a checkpoint, the learner's unpacker loads it into the real engine, and
    the greedy tokens must equal those of the reference checkpoint."""
    if pack_int4 is None or unpack_int4 is None:
        return not_answered(WHAT)
    _check_pack(pack_int4)
    _check_unpack(unpack_int4)
    with tempfile.TemporaryDirectory(prefix="folo_edu_lab09_") as tmp:
        ref = Path(reference_dir) if reference_dir else tiny_reference_checkpoint(tmp)
        mine = learner_checkpoint(ref, Path(tmp) / "learner", pack_int4)
        from safetensors.torch import load_file

        a, b = load_file(str(ref / "model.safetensors")), load_file(str(mine / "model.safetensors"))
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        if differ:
            raise LabCheckFailed(f"the checkpoint packed by pack_int4 differs from the "
                                 f"reference in {differ[0]}")
        prompts = [[5, 9, 3, 17, 4], [100, 2], [42] * 9]
        expected, _ = _greedy_tokens(ref, prompts)
        with unpack_in_loader(unpack_int4):
            got, kernel = _greedy_tokens(mine, prompts)
        if got != expected:
            raise LabCheckFailed("the engine loaded your checkpoint with your unpack_int4 but "
                                 "generated different tokens from the reference checkpoint")
    return report_pass(f"{WHAT}: your packer wrote a 4-bit checkpoint byte for byte, and the "
                       f"engine ({kernel} kernel) loaded it with your unpacker and generated "
                       "the reference tokens")
