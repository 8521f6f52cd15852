"""The CPU PagedAttention kernel (attention backend "numba") against the float64 reference."""
from __future__ import annotations

import pytest
import torch

from folo_edu.attention import AttentionMetadata, resolve_backend_name, unavailable_reason
from paged_cases import paged_case, reference_attention

pytestmark = pytest.mark.skipif(unavailable_reason("numba") is not None,
                                reason=f"numba: {unavailable_reason('numba')}")


def _decode(*args, threads=1):
    from folo_edu.attention.numba_kernels import NumbaDecoder

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return NumbaDecoder()(*args)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("block_size, seq_lens", [
    (16, [1, 17, 40, 16]),      # partial and exactly-full last blocks
    (1, [5, 1, 9]),             # one token per block
    (300, [299, 7, 150]),       # the contiguous cache: one block per sequence
])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_kernel_matches_the_reference(block_size, seq_lens, dtype, atol):
    q, kc, vc, tables, lens = paged_case(block_size, 8, 6, 2, seq_lens, dtype=dtype)
    ours = _decode(q, kc, vc, tables, lens, 0.3)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), reference_attention(q, kc, vc, tables, lens, 0.3),
                               rtol=0, atol=atol)


def test_padding_row_gives_zeros_and_threads_split_rows_exactly():
    q, kc, vc, tables, lens = paged_case(4, 16, 4, 1, [9, 0, 20, 3, 31, 2, 12])
    one = _decode(q, kc, vc, tables, lens, 0.5)
    assert torch.equal(one[1], torch.zeros_like(one[1]))
    # Each row is computed the same way whichever thread runs it: bit-identical.
    assert torch.equal(_decode(q, kc, vc, tables, lens, 0.5, threads=3), one)


def test_engine_tensors_int64_tables_and_int32_lengths():
    q, kc, vc, tables, lens = paged_case(16, 8, 4, 2, [33, 5])
    ours = _decode(q, kc, vc, tables.long(), lens.int(), 0.2)
    torch.testing.assert_close(ours, reference_attention(q, kc, vc, tables, lens, 0.2),
                               rtol=0, atol=1e-12)


def test_backend_uses_sdpa_for_dtypes_without_a_kernel():
    """bf16 has no kernel: the decode rows go through SDPA and still match."""
    from folo_edu.attention.numba_backend import NumbaBackend

    q, kc, vc, tables, lens = paged_case(16, 8, 4, 2, [20, 7])
    meta = AttentionMetadata.build([1, 1], lens.tolist(), torch.zeros(2, dtype=torch.long),
                                   tables.long(), 16)
    out = NumbaBackend().forward(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), meta, 0.2,
                                 None, None)
    torch.testing.assert_close(out.double(), reference_attention(q, kc, vc, tables, lens, 0.2),
                               rtol=0, atol=3e-2)


def test_auto_picks_numba_on_cpu_and_sdpa_without_it(monkeypatch):
    from folo_edu.attention import numba_kernels

    assert resolve_backend_name("auto", "cpu") == "numba"
    monkeypatch.setattr(numba_kernels, "numba", None)
    monkeypatch.setattr(numba_kernels, "_IMPORT_ERROR", "No module named 'numba'", raising=False)
    assert "pip install numba" in unavailable_reason("numba")
    assert resolve_backend_name("auto", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="attention_backend='numba'.*pip install numba"):
        from folo_edu.attention import get_backend
        get_backend("numba", "cpu")
