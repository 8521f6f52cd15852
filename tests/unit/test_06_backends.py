"""M4 units: the backend registry, paged decode in torch, the flex block mask, graph buckets."""
from __future__ import annotations

import pytest
import torch

from folo_edu.attention import (BACKENDS, available_backends, get_backend,
                                resolve_backend_name, unavailable_reason)
from folo_edu.attention.flex import decode_block_mask
from folo_edu.attention.paged_torch import paged_decode_torch
from folo_edu.config import ATTENTION_BACKENDS
from folo_edu.engine.cuda_graphs import DecodeGraphRunner, graph_batch_sizes
from paged_cases import paged_case, reference_attention


@pytest.mark.parametrize("block_size, seq_lens, tile", [
    (16, [1, 17, 40, 16], 128),     # partial and exactly-full last blocks
    (1, [5, 1, 9], 4),              # one token per block
    (4, [30, 3, 12], 8),            # a tile spans several blocks
    (300, [299, 7, 150], 128),      # a block (the contiguous cache) spans several tiles
])
def test_paged_decode_torch_matches_the_reference(block_size, seq_lens, tile):
    q, kc, vc, tables, lens = paged_case(block_size, 8, 4, 2, seq_lens)
    ours = paged_decode_torch(q, kc, vc, tables, lens, 0.3, tile=tile)
    torch.testing.assert_close(ours, reference_attention(q, kc, vc, tables, lens, 0.3),
                               rtol=0, atol=1e-12)


def test_paged_decode_torch_padding_row_is_zero_and_others_unchanged():
    q, kc, vc, tables, lens = paged_case(4, 8, 4, 2, [9, 0, 20])
    out = paged_decode_torch(q, kc, vc, tables, lens, 0.5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    real = [0, 2]
    torch.testing.assert_close(
        out[real], paged_decode_torch(q[real], kc, vc, tables[real], lens[real], 0.5),
        rtol=0, atol=1e-12)


def test_paged_decode_torch_half_precision_accumulates_in_float32():
    q, kc, vc, tables, lens = paged_case(16, 8, 4, 2, [50, 3])
    ref = reference_attention(q, kc, vc, tables, lens, 0.2)
    half = paged_decode_torch(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), tables, lens, 0.2)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref, rtol=0, atol=3e-2)


def test_flex_block_mask_lists_only_each_rows_blocks():
    q, kc, vc, tables, lens = paged_case(16, 8, 4, 2, [5, 33, 17])
    num_blocks = kc.shape[0]                          # 3 more than the rows own
    mask = decode_block_mask(tables, lens, num_blocks=num_blocks, block_size=16)
    dense = mask.to_dense()[:, 0, 0]                  # [B, num_blocks] visited blocks
    for b, n in enumerate(lens.tolist()):
        expected = torch.zeros(num_blocks, dtype=dense.dtype)
        expected[tables[b, :-(-n // 16)]] = 1
        assert torch.equal(dense[b], expected), b


@pytest.mark.parametrize("block_size, seq_lens", [(16, [5, 33, 17]), (4, [1, 13, 8, 2])])
def test_flex_backend_decode_matches_the_reference(block_size, seq_lens):
    from folo_edu.attention import AttentionMetadata

    q, kc, vc, tables, lens = paged_case(block_size, 8, 4, 2, seq_lens)
    n = len(seq_lens)
    meta = AttentionMetadata.build([1] * n, seq_lens, torch.zeros(n, dtype=torch.long),
                                   tables, block_size)
    out = get_backend("flex").forward(q, kc, vc, meta, 0.4, None, None)
    torch.testing.assert_close(out, reference_attention(q, kc, vc, tables, lens, 0.4),
                               rtol=0, atol=1e-12)


def test_compiled_flex_pads_the_batch_to_a_power_of_two():
    """Compiled (one static shape per power of two): 3 decode rows run as 4."""
    from folo_edu.attention import AttentionMetadata

    q, kc, vc, tables, lens = paged_case(16, 8, 4, 2, [5, 33, 17], dtype=torch.float32)
    meta = AttentionMetadata.build([1] * 3, [5, 33, 17], torch.zeros(3, dtype=torch.long),
                                   tables, 16)
    from folo_edu.attention.flex import FlexBackend

    backend = FlexBackend(compile=True)  # the engine refuses this on a CPU (minutes of compiling)
    out = backend.forward(q, kc, vc, meta, 0.4, None, None)
    assert meta.per_step["flex_block_mask"].shape[0] == 4
    ref = reference_attention(q, kc, vc, tables, lens, 0.4)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


def test_registry_names_match_the_config_choices():
    assert set(ATTENTION_BACKENDS) == {"auto", *BACKENDS}
    for name in ("naive", "sdpa", "paged-torch"):
        assert unavailable_reason(name) is None and name in available_backends()


def test_auto_is_numba_on_cpu_and_triton_on_cuda_when_installed():
    on_cpu = "numba" if unavailable_reason("numba") is None else "sdpa"
    assert resolve_backend_name("auto", torch.device("cpu")) == on_cpu
    expected = "triton" if unavailable_reason("triton") is None else "sdpa"
    assert resolve_backend_name("auto", "cuda") == expected
    assert resolve_backend_name("flex", "cuda") == "flex"
    assert get_backend("auto", torch.device("cpu")).name == on_cpu


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'flash'.*'paged-torch'"):
        get_backend("flash")


def test_an_unavailable_backend_says_why(monkeypatch, tiny_model_dir):
    import folo_edu.attention as attention
    from folo_edu.engine.llm_engine import LLMEngine

    monkeypatch.setattr(attention, "triton_unavailable_reason",
                        lambda: "No module named 'triton'")
    with pytest.raises(ValueError, match="attention_backend='triton'.*No module named 'triton'"
                                         ".*expected one that runs here: 'naive'"):
        LLMEngine.from_kwargs(str(tiny_model_dir()), skip_tokenizer_init=True,
                              attention_backend="triton", num_kv_blocks=8)


@pytest.mark.parametrize("field", ["enforce_eager", "torch_compile"])
def test_engine_flags_must_be_bools(tiny_model_dir, field):
    from folo_edu.engine.llm_engine import LLMEngine

    with pytest.raises(TypeError, match=f"EngineConfig.{field}='yes': expected a bool"):
        LLMEngine.from_kwargs(str(tiny_model_dir()), skip_tokenizer_init=True,
                              num_kv_blocks=8, **{field: "yes"})


def test_cuda_graph_status_says_why_graphs_are_off(tiny_model_dir):
    from folo_edu.engine.llm_engine import LLMEngine

    def status(**kw):
        engine = LLMEngine.from_kwargs(str(tiny_model_dir()), skip_tokenizer_init=True,
                                       num_kv_blocks=8, device="cpu", **kw)
        assert engine.model_runner.graph_runner is None
        return engine.model_runner.cuda_graph_status

    assert status() == "off: CUDA graphs need a CUDA device, this engine runs on cpu"
    assert status(enforce_eager=True) == "off: enforce_eager=True"


@pytest.mark.parametrize("max_batch, sizes", [
    (1, [1]), (5, [1, 2, 4, 5]), (16, [1, 2, 4, 8, 16]),
    (64, [1, 2, 4, 8, 16, 32, 48, 64]), (40, [1, 2, 4, 8, 16, 32, 40])])
def test_graph_batch_sizes(max_batch, sizes):
    assert graph_batch_sizes(max_batch) == sizes


class _RecordingModel(torch.nn.Module):
    """Stands in for the decoder: records what the graph runner feeds it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input_ids, positions, meta):
        self.calls.append((input_ids.clone(), positions.clone(), meta.slot_mapping.clone(),
                           meta.seq_lens_tensor.clone(), meta.num_decodes))
        return (input_ids * 10 + positions)[:, None].double().expand(-1, 3)


def test_graph_runner_pads_to_the_bucket_and_returns_only_real_rows():
    model = _RecordingModel()
    runner = DecodeGraphRunner(model, max_batch=8, max_blocks_per_seq=4, block_size=4,
                               hidden_size=3, dtype=torch.float64, device="cpu", capture=False)
    out = runner.run(torch.tensor([7, 8, 9]), torch.tensor([4, 5, 6]), torch.tensor([11, 12, 13]),
                     torch.tensor([[2, 1], [0, 3], [5, 6]]), torch.tensor([5, 6, 7]))
    ids, pos, slots, lens, nd = model.calls[-1]
    assert nd == 4                                        # 3 rows run in the bucket of 4
    assert ids.tolist() == [7, 8, 9, 0] and pos.tolist() == [4, 5, 6, 0]
    assert slots.tolist() == [11, 12, 13, -1]             # the padding row stores nothing
    assert lens.tolist() == [5, 6, 7, 0]                  # and reads nothing
    assert out[:, 0].tolist() == [74, 85, 96]
    # A smaller batch next: rows left over from the bigger one must be re-padded.
    runner.run(torch.tensor([1]), torch.tensor([2]), torch.tensor([3]), torch.tensor([[4]]),
               torch.tensor([3]))
    assert model.calls[-1][4] == 1
    runner.run(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0] * 5), torch.tensor([0] * 5),
               torch.zeros(5, 1, dtype=torch.long), torch.tensor([1] * 5))
    assert model.calls[-1][4] == 8 and model.calls[-1][2].tolist()[5:] == [-1, -1, -1]
    with pytest.raises(ValueError, match="decode batch of 9: expected <= 8"):
        runner.bucket(9)


def test_engine_refuses_compiled_flex_on_cpu_and_names_the_alternative():
    with pytest.raises(ValueError, match="attention_backend='flex' with torch_compile=True on a "
                                         "CPU.*'numba'"):
        get_backend("flex", "cpu", compile=True)
