"""M7: the fast GPTQ matmuls in folo_edu.quantization.kernels, against the reference
x @ dequantize_gptq(...).T.

Random GPTQ layers are built from integers, scales and zeros and packed with the package's
``pack_gptq``; the reference unpacks them with ``dequantize_gptq`` in float64. The Triton
kernel runs in Triton's interpreter on a CPU-only machine (small shapes: a few seconds),
and compiled on CUDA tensors when a GPU is present.
"""
from __future__ import annotations

import pytest
import torch

from folo_edu.quantization import kernels as qk
from folo_edu.quantization.packing import dequantize_gptq, pack_gptq


def gptq_layer(in_f, out_f, bits, group_size, *, sym=True, act_order=False, seed=0,
               exact_bf16=False):
    """Random HF GPTQ tensors for an [out_f, in_f] layer (group_size -1: per row)."""
    gen = torch.Generator().manual_seed(seed)
    gs = in_f if group_size == -1 else group_size
    groups = -(-in_f // gs)
    maxq = 2 ** bits - 1
    q = torch.randint(0, maxq + 1, (out_f, in_f), generator=gen)
    if sym:
        zeros = torch.full((groups, out_f), float((maxq + 1) // 2))
    else:  # GPTQ stores zero - 1 unsigned, so zero is in 1 .. maxq + 1 (here 1 .. maxq)
        zeros = torch.randint(1, maxq + 1, (groups, out_f), generator=gen).float()
    if exact_bf16:  # powers of two: exact in float16 and bfloat16, and so is s * (8 - z)
        scales = 2.0 ** torch.randint(-8, -4, (groups, out_f), generator=gen).float()
    else:
        scales = torch.rand(groups, out_f, generator=gen) * 0.02 + 0.001
    g_idx = torch.arange(in_f) // gs
    if act_order:  # HF act-order: feature i is in the group of its rank in a permutation
        perm = torch.randperm(in_f, generator=gen)
        g_idx = torch.empty_like(g_idx)
        g_idx[perm] = torch.arange(in_f) // gs
    return pack_gptq(q, scales, zeros, g_idx, bits)


def reference(x, t, bits):
    w = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits,
                        dtype=torch.float64)
    return x.double() @ w.T


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


# ---- the CPU int4 path -------------------------------------------------------------------
needs_int4 = pytest.mark.skipif(qk._int4_cpu_ops_reason() is not None,
                                reason=str(qk._int4_cpu_ops_reason()))

INT4_CASES = [  # (in, out, group_size, act_order, sym)
    (256, 64, 128, False, True),
    (256, 64, 32, False, False),
    (576, 48, 64, True, False),
    (576, 32, 192, False, True),     # 192: not an op group size, re-blocked to 64
    (576, 32, -1, True, False),      # per row: one group of 576 -> 9 blocks of 64
    (576, 32, 128, True, False),     # 128 does not divide 576: last group padded
    (160, 16, 32, True, True),
]


@needs_int4
@pytest.mark.parametrize("in_f,out_f,gs,act,sym", INT4_CASES)
def test_int4_cpu_float32_matches_reference(in_f, out_f, gs, act, sym):
    # float32 compute: the op's own arithmetic, so a tight tolerance pins the semantics
    t = gptq_layer(in_f, out_f, 4, gs, sym=sym, act_order=act)
    state = qk.prepare_int4_cpu(**t, group_size=gs, compute_dtype=torch.float32)
    x = torch.randn(5, in_f)
    y = qk.int4_cpu_matmul(x, state)
    assert y.shape == (5, out_f) and y.dtype == torch.float32
    assert rel_err(y, reference(x, t, 4)) < 1e-5


@needs_int4
@pytest.mark.parametrize("in_f,out_f,gs,act,sym", INT4_CASES)
def test_int4_cpu_bfloat16_matches_reference(in_f, out_f, gs, act, sym):
    # bfloat16 compute (the fast one): x, scales and offsets rounded to 8-bit mantissas
    t = gptq_layer(in_f, out_f, 4, gs, sym=sym, act_order=act, seed=1)
    state = qk.prepare_int4_cpu(**t, group_size=gs)
    x = torch.randn(3, 7, in_f)  # leading dims are kept
    y = qk.int4_cpu_matmul(x, state)
    assert y.shape == (3, 7, out_f) and y.dtype == torch.float32
    assert rel_err(y, reference(x, t, 4)) < 1e-2


@needs_int4
def test_int4_cpu_bfloat16_exact_inputs():
    # with x, scales and s * (8 - z) exact in bfloat16, only float32 accumulation and the
    # final rounding to bfloat16 remain: the conversion of GPTQ's zero is exact
    t = gptq_layer(256, 64, 4, 64, sym=False, act_order=True, exact_bf16=True)
    state = qk.prepare_int4_cpu(**t)
    x = torch.randint(-4, 5, (4, 256)).float()
    ref = reference(x, t, 4)
    y = qk.int4_cpu_matmul(x, state)
    assert torch.allclose(y.double(), ref, rtol=2 ** -8, atol=1e-6)


@needs_int4
def test_int4_cpu_state_layout_and_bytes():
    t = gptq_layer(576, 1536, 4, 64)
    state = qk.prepare_int4_cpu(**t, group_size=64)
    assert state.src is None and state.op_group_size == 64   # sorted, divisible: no gather
    assert state.packed.dtype == torch.uint8 and state.packed.shape == (1536, 288)
    # 4 bits per weight plus two bfloat16 per group of 64: about 0.14 of fp32's 4 bytes
    assert state.nbytes() / (576 * 1536 * 4) < 0.15
    act = qk.prepare_int4_cpu(**gptq_layer(576, 64, 4, 64, act_order=True))
    assert act.src is not None and act.src.shape == (576,)


@needs_int4
def test_int4_cpu_bad_input():
    with pytest.raises(ValueError, match="multiple of 16"):
        qk.prepare_int4_cpu(**gptq_layer(64, 40, 4, 32))
    t = gptq_layer(64, 32, 4, 32)
    with pytest.raises(ValueError, match="32 features per group|per group"):
        qk.prepare_int4_cpu(**t, group_size=16)
    state = qk.prepare_int4_cpu(**t)
    with pytest.raises(ValueError, match="features"):
        qk.int4_cpu_matmul(torch.randn(1, 63), state)


# ---- the Triton kernel -------------------------------------------------------------------
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        qk.triton_mode() != "interpreter", reason="CPU tensors need Triton's interpreter")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU on this machine")),
]
needs_triton = pytest.mark.skipif(not qk.TRITON_AVAILABLE,
                                  reason=f"Triton unavailable: {qk.TRITON_UNAVAILABLE_REASON}")

TRITON_CASES = [  # (bits, in, out, group_size, act_order, sym, rows)
    (4, 64, 64, 32, False, True, 1),
    (4, 96, 80, 32, True, False, 3),     # out not a multiple of the 64-wide tile
    (2, 64, 32, 16, True, False, 2),
    (8, 64, 32, -1, False, False, 17),   # 17 rows: two row tiles
    (3, 64, 64, 32, True, False, 2),     # 3 bits: values straddling words
]


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits,in_f,out_f,gs,act,sym,rows", TRITON_CASES)
def test_triton_matches_reference(device, bits, in_f, out_f, gs, act, sym, rows):
    t = gptq_layer(in_f, out_f, bits, gs, sym=sym, act_order=act, seed=bits)
    x = torch.randn(rows, in_f)
    ref = reference(x, t, bits)
    td = {k: v.to(device) for k, v in t.items()}
    y = qk.triton_gptq_matmul(x.to(device), **td, bits=bits, group_size=gs)
    assert y.shape == (rows, out_f) and y.dtype == torch.float32
    assert rel_err(y.cpu(), ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
def test_triton_half_precision(device):
    t = gptq_layer(64, 64, 4, 32, sym=False, act_order=True, seed=7)
    x = torch.randn(2, 64)
    ref = reference(x, t, 4)
    td = {k: v.to(device) for k, v in t.items()}
    for dtype in (torch.float16, torch.bfloat16):
        y = qk.triton_gptq_matmul(x.to(device, dtype), **td, bits=4, group_size=32)
        assert y.dtype == dtype
        assert rel_err(y.cpu(), ref) < 2e-2


@needs_triton
def test_triton_bad_input():
    t = gptq_layer(64, 32, 4, 32)
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="bits 5"):
        qk.triton_gptq_matmul(x, **t, bits=5)
    with pytest.raises(ValueError, match="qweight shape"):
        qk.triton_gptq_matmul(torch.randn(1, 32), **t, bits=4)
    with pytest.raises(ValueError, match="float64"):
        qk.triton_gptq_matmul(x.double(), **t, bits=4)
    with pytest.raises(ValueError, match="groups"):
        qk.triton_gptq_matmul(x, **t, bits=4, group_size=16)


# ---- choosing ----------------------------------------------------------------------------
def test_select_kernel():
    c = qk.select_kernel("cpu", 4, 128, True, out_features=1536)
    if qk._int4_cpu_ops_reason() is None:
        assert c.name == "int4-cpu"
    assert qk.select_kernel("cpu", 8, 128, False).name == "reference"
    assert "int4 only" in qk.select_kernel("cpu", 3, 128, False).reason
    assert qk.select_kernel("cpu", 4, 128, False, out_features=40).name == "reference"
    assert qk.select_kernel("cpu", 4, 128, False, dtype=torch.float64).name == "reference"
    cuda = qk.select_kernel("cuda", 4, 128, True)
    assert cuda.name == ("triton" if qk.triton_mode() == "compiled" else "reference")
    assert qk.select_kernel("cuda", 5, 128, False).name == "reference"
    for choice in (c, cuda):
        assert choice.name in ("int4-cpu", "triton", "reference") and choice.reason
    avail = qk.available_kernels()
    assert set(avail) == {"int4-cpu", "triton", "reference"} and avail["reference"] is None
