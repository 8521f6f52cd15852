"""M4: the Triton kernels in folo_edu.attention.triton_kernels, against plain torch.

On a machine without CUDA the kernels run in Triton's interpreter (one Python pass per
program instance, hence the small shapes); on a GPU machine the same tests also run the
compiled kernels on CUDA tensors, through the ``device`` parameter.
"""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

# On a machine without CUDA, `import folo_edu` (in conftest) has set TRITON_INTERPRET=1
# before anything imported triton, so these kernels run in Triton's interpreter.
from folo_edu.attention import triton_kernels as tk
from paged_cases import paged_case, reference_attention  # noqa: E402

pytestmark = pytest.mark.skipif(
    not tk.TRITON_AVAILABLE, reason=f"Triton kernels unavailable: {tk.TRITON_UNAVAILABLE_REASON}")

DEVICES = [
    # compiled kernels take CUDA tensors only; CPU tensors run in the interpreter
    pytest.param("cpu", marks=pytest.mark.skipif(
        tk.triton_mode() == "compiled", reason="compiled Triton kernels need CUDA tensors")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU on this machine")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def test_mode():
    assert tk.triton_mode() in ("compiled", "interpreter")
    if not torch.cuda.is_available():
        assert tk.triton_mode() == "interpreter"


def test_import_without_triton_reports_the_reason(monkeypatch):
    # Load a second copy of the module while `import triton` fails: importing must not
    # raise, and the kernels must raise RuntimeError naming the reason.
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    spec = importlib.util.spec_from_file_location("_tk_without_triton", tk.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert not copy.TRITON_AVAILABLE and copy.triton_mode() == "unavailable"
    assert "triton cannot be imported" in copy.TRITON_UNAVAILABLE_REASON
    with pytest.raises(RuntimeError, match="triton cannot be imported"):
        copy.paged_decode_attention(*[torch.zeros(1)] * 5, scale=1.0)


# ---- store_kv ----------------------------------------------------------------------------
def _kv_views(T, kv_heads, head_dim, layout, dtype, device):
    """Two [T, KVH, D] non-contiguous views, as a model would hand them over."""
    if layout == "qkv-slice":  # k and v are column slices of one fused projection
        heads = 3 * kv_heads   # 1 query head per KV head is enough here
        qkv = torch.randn(T, heads * head_dim, device=device).to(dtype)
        k = qkv[:, kv_heads * head_dim:2 * kv_heads * head_dim].view(T, kv_heads, head_dim)
        v = qkv[:, 2 * kv_heads * head_dim:].view(T, kv_heads, head_dim)
    else:  # "transposed": the head_dim stride is not 1
        k, v = (torch.randn(T, head_dim, kv_heads, device=device).to(dtype).transpose(1, 2)
                for _ in range(2))
    assert not k.is_contiguous() and not v.is_contiguous()
    return k, v


@pytest.mark.parametrize("layout", ["qkv-slice", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_store_kv(layout, dtype, device):
    torch.manual_seed(0)
    T, num_blocks, block_size, kv_heads, head_dim = 9, 6, 4, 2, 24  # a row of 48: not pow2
    k, v = _kv_views(T, kv_heads, head_dim, layout, dtype, device)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(num_blocks * block_size, device=device)[:T]
    slots[[2, 5]] = -1  # padding tokens: must leave the cache untouched
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            k_expected.view(-1, kv_heads, head_dim)[slot] = k[t]
            v_expected.view(-1, kv_heads, head_dim)[slot] = v[t]

    tk.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


# ---- paged_decode_attention --------------------------------------------------------------
# seq_lens: 1 key, a padding row (0), one around the tile size (32), long ones that span
# many blocks, and a sequence shorter than one block when block_size is 256
SEQ_LENS = [1, 0, 33, 100, 17]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("block_size, head_dim, num_heads, kv_heads", [
    (1, 16, 4, 2),    # one token per block: every key is looked up separately
    (16, 24, 6, 2),   # head_dim not a power of 2: masked lanes
    (16, 64, 8, 8),   # plain multi-head attention (group 1)
    (256, 32, 4, 1),  # one block per sequence ("contiguous" cache), multi-query
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_paged_decode_attention(block_size, head_dim, num_heads, kv_heads, dtype, device):
    q, k_cache, v_cache, block_tables, seq_lens = paged_case(
        block_size, head_dim, num_heads, kv_heads, SEQ_LENS, dtype, device)
    scale = 1 / math.sqrt(head_dim)
    out = tk.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    assert torch.isfinite(out).all()
    assert (out[SEQ_LENS.index(0)] == 0).all()  # the padding row is zeros, not NaN
    expected = reference_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
    torch.testing.assert_close(out.cpu().double(), expected, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)],
                         ids=["f16", "bf16"])
def test_paged_decode_attention_half_precision(dtype, atol, device):
    # float32 accumulation inside: the error is about one rounding of the output
    q, k_cache, v_cache, block_tables, seq_lens = paged_case(
        16, 24, 4, 2, [40, 3], dtype, device)
    out = tk.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, 0.2)
    assert out.dtype == dtype
    expected = reference_attention(q, k_cache, v_cache, block_tables, seq_lens, 0.2)
    torch.testing.assert_close(out.cpu().double(), expected, atol=atol, rtol=0)


def test_store_then_attend(device):
    # the two kernels together, as a decode step uses them: store this step's K/V, then
    # attend over the cache with the new token included
    q, k_cache, v_cache, block_tables, seq_lens = paged_case(
        4, 16, 4, 2, [5, 9], torch.float32, device)
    k_new = torch.randn(2, 2, 16, device=device)
    v_new = torch.randn(2, 2, 16, device=device)
    bt = block_tables.long()
    last = (seq_lens - 1).long()  # position of the current token
    slots = bt[torch.arange(2, device=device), last // 4] * 4 + last % 4
    tk.store_kv(k_new, v_new, k_cache, v_cache, slots)
    out = tk.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, 0.25)
    expected = reference_attention(q, k_cache, v_cache, block_tables, seq_lens, 0.25)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(k_cache.view(-1, 2, 16)[slots], k_new)


# ---- bad input -----------------------------------------------------------------------------
def _bad_attention_calls(device):
    q, k_cache, v_cache, bt, sl = paged_case(4, 16, 4, 2, [3, 5], torch.float32, device)
    strided_cache = torch.randn(k_cache.shape[0], 2, 4, 16, device=device).transpose(1, 2)
    return [
        ((q[0], k_cache, v_cache, bt, sl), "q must be 3-D"),
        ((q, k_cache, v_cache, bt, sl[:1]), "seq_lens has 1 entries, q has 2"),
        ((q, k_cache, v_cache, bt[:1], sl), "block_tables has 1 rows"),
        ((q, strided_cache, v_cache, bt, sl), "k_cache must be contiguous"),
        ((q, k_cache[0], v_cache, bt, sl), "k_cache must be 4-D"),
        ((q[:, :3], k_cache, v_cache, bt, sl), "not a multiple"),
        ((q[..., :8], k_cache, v_cache, bt, sl), "head_dim"),
        ((q.double(), k_cache, v_cache, bt, sl), "q dtype"),
        ((q, k_cache, v_cache, bt.float(), sl), "block_tables must be an integer"),
    ]


def test_attention_rejects_bad_input(device):
    for args, message in _bad_attention_calls(device):
        with pytest.raises(ValueError, match=message):
            tk.paged_decode_attention(*args, scale=1.0)


def test_store_kv_rejects_bad_input(device):
    k = torch.randn(3, 2, 16, device=device)
    cache = torch.zeros(4, 4, 2, 16, device=device)
    slots = torch.tensor([0, 1, 2], device=device)
    cases = [
        ((k, k, cache, cache, slots[:2]), "slot_mapping has 2 entries but k has 3"),
        ((k[0], k[0], cache, cache, slots), "k must be 3-D"),
        ((k, k, cache, cache.transpose(1, 2), slots), "v_cache shape"),
        ((k, k.double(), cache, cache, slots), "v shape|dtypes differ"),
        ((k, k, cache, cache, slots.float()), "slot_mapping must be an integer"),
        ((k[:, :1], k[:, :1], cache, cache, slots), "does not match"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            tk.store_kv(*args)
    if tk.triton_mode() == "compiled" and device == "cuda":  # CPU tensors, compiled kernels
        with pytest.raises(ValueError, match="need CUDA tensors"):
            tk.store_kv(k.cpu(), k.cpu(), cache.cpu(), cache.cpu(), slots.cpu())
