"""M4: the measurements, arithmetic and figures in folo_edu.viz (decode_attention,
op_overhead, op_count, cuda_graphs, gpu_results), and the exercise checks in
folo_edu.labs.m4_backends.

The arithmetic is pinned to the engine's own code (DecodeGraphRunner.bucket, a full
softmax), the op counts to what each backend is known to do, and the measurements only
to being sensible: this machine is shared, so no test asserts a timing ratio.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

# First: on a machine without CUDA this sets TRITON_INTERPRET=1 before triton is imported.
from folo_edu.viz import cuda_graphs as vcg  # noqa: I001
from folo_edu.viz import decode_attention as vda
from folo_edu.viz import gpu_results as vgr
from folo_edu.viz import op_count as voc
from folo_edu.viz import op_overhead as voh

from folo_edu.attention.triton_kernels import triton_mode
from folo_edu.engine.cuda_graphs import DecodeGraphRunner, graph_batch_sizes
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.labs.m4_backends import (check_bucket, check_graph_speedup, check_online_softmax,
                                       check_padding_rows)

needs_triton = pytest.mark.skipif(triton_mode() == "unavailable",
                                  reason="Triton kernels unavailable in this process")


@pytest.fixture(scope="module")
def decoder():
    return voc.random_decoder("qwen3-odd-headdim", num_hidden_layers=2)


# ---- synthetic decode steps and the backends on them --------------------------------------
def test_synthetic_step_is_a_consistent_paged_cache():
    step = vda.synthetic_decode_step(5, [40, 3, 16, 17, 33], block_size=8, seed=1)
    meta = step.meta
    assert meta.seq_lens == [3, 16, 17, 33, 40] and meta.num_decodes == 5
    assert step.q.shape == (5, 4, 32) and step.k_cache.shape[1:] == (8, 2, 32)
    tables = [meta.block_tables[i, :-(-n // 8)].tolist() for i, n in enumerate(meta.seq_lens)]
    owned = [b for t in tables for b in t]
    assert len(owned) == len(set(owned)), "two sequences share a block"
    for i, (table, n) in enumerate(zip(tables, meta.seq_lens)):
        assert meta.slot_mapping[i] == table[(n - 1) // 8] * 8 + (n - 1) % 8
    flat = step.k_cache.view(-1, 2, 32)
    assert torch.equal(flat[meta.slot_mapping], step.k)
    with pytest.raises(ValueError, match="expected an int >= 1 or 2"):
        vda.synthetic_decode_step(2, [4, 5, 6])


def test_backends_agree_with_naive():
    step = vda.synthetic_decode_step(6, [1, 15, 16, 17, 130, 257])
    diffs = vda.max_abs_diff_vs_naive(step, ["sdpa", "paged-torch"])
    assert set(diffs) == {"sdpa", "paged-torch"}
    assert all(0 <= d < 1e-5 for d in diffs.values())


@needs_triton
def test_triton_agrees_with_naive_on_a_tiny_step():
    diffs = vda.max_abs_diff_vs_naive(vda.synthetic_decode_step(2, [17, 40]), ["triton"])
    assert diffs["triton"] < 1e-5


def test_measure_decode_latency_rows_and_skips():
    rows = vda.measure_decode_latency(["naive", "sdpa"], [(1, 16), (2, 40)], repeats=2)
    assert [(r["backend"], r["batch"], r["context"]) for r in rows] == [
        ("naive", 1, 16), ("sdpa", 1, 16), ("naive", 2, 40), ("sdpa", 2, 40)]
    assert all(r["ms"] > 0 and "note" not in r for r in rows)
    skipped = vda.measure_decode_latency(["sdpa"], [(1, 16), (2, 16)], max_call_s=0.0)
    assert all(r["ms"] is None for r in skipped)
    assert "took" in skipped[0]["note"] and "batch 1" in skipped[1]["note"]


# ---- per-op overhead ---------------------------------------------------------------------
def test_time_per_op():
    result = voh.time_per_op(sizes=(1, 16, 1 << 20), repeats=2, target_s=0.001)
    assert result["elements"].tolist() == [1, 16, 1 << 20]
    assert (result["seconds"] > 0).all() and result["bytes"][0] == 12
    floor = voh.per_op_overhead(result)
    assert 0 < floor < 1e-3  # well under a millisecond per tiny op on any machine
    assert result["seconds"][-1] > floor  # 12 MB move takes longer than an empty call
    with pytest.raises(ValueError, match="no size"):
        voh.per_op_overhead(result, max_elements=0)


# ---- counting ops ------------------------------------------------------------------------
def test_op_counter_skips_views_and_counts_syncs():
    x = torch.ones(4)
    with voc.OpCounter() as counter:
        y = x.view(2, 2).t()       # views: no kernel
        torch.empty(3)             # an allocation: no kernel
        z = (y + 1).sum()          # two kernels
        z.item()                   # a host sync
    assert sum(counter.kernels.values()) == 2 and counter.syncs == 1
    assert counter.kernels["aten.add"] == 1 and counter.kernels["aten.sum"] == 1


def test_count_decode_ops_per_backend(decoder):
    layers = decoder.spec.num_layers
    counts = {}
    for name in ("naive", "sdpa", "paged-torch"):
        voc.set_backend(decoder, name)
        counts[name] = {b: voc.count_decode_ops(decoder, b, context_len=40) for b in (1, 4)}
    assert counts["paged-torch"][4]["syncs"] == 0  # its tile count comes from the host
    assert counts["naive"][4]["kernels"] > counts["naive"][1]["kernels"]  # one loop per seq
    assert min(c[4]["kernels"] for c in counts.values()) > 10 * layers


@needs_triton
def test_count_decode_ops_counts_a_triton_launch_per_kernel(decoder):
    layers = decoder.spec.num_layers
    voc.set_backend(decoder, "triton")
    counts = {b: voc.count_decode_ops(decoder, b, context_len=40) for b in (1, 4)}
    triton = counts[4]
    assert triton["by_op"]["triton:store_kv"] == layers
    assert triton["by_op"]["triton:paged_decode_attention"] == layers
    assert counts[1]["kernels"] == triton["kernels"]  # independent of the batch
    assert triton["syncs"] == 0
    # the fake kernels were put back
    assert decoder.layers[0].self_attn.backend.kernels.__name__.endswith("triton_kernels")


def test_time_decode_forward(decoder):
    voc.set_backend(decoder, "sdpa")
    assert 0 < voc.time_decode_forward(decoder, batch=2, context_len=20, repeats=2) < 5


# ---- arithmetic --------------------------------------------------------------------------
@pytest.mark.parametrize("max_batch", [1, 8, 20, 64])
def test_bucket_and_padding_rows(max_batch):
    runner = DecodeGraphRunner(None, max_batch, 1, 16, 8, torch.float32, "cpu", capture=False)
    sizes = graph_batch_sizes(max_batch)
    for n in range(1, max_batch + 1):
        bucket = runner.bucket(n)
        assert bucket in sizes and bucket >= n
        assert all(s < n for s in sizes if s < bucket)  # the smallest that fits
        assert vcg.padding_rows(n, sizes) == bucket - n >= 0
    with pytest.raises(ValueError, match="largest bucket"):
        vcg.bucket_of(max_batch + 1, sizes)


@pytest.mark.parametrize("tile", [1, 7, 64])
def test_online_softmax_merge_folds_to_the_full_softmax(tile):
    scores = (torch.randn(150, generator=torch.Generator().manual_seed(tile)) * 5).tolist()
    m, l = float("-inf"), 0.0
    for start in range(0, len(scores), tile):
        m, l = vda.online_softmax_merge(m, l, scores[start:start + tile])
    full = torch.tensor(scores, dtype=torch.float64)
    assert m == max(scores)
    assert m + math.log(l) == pytest.approx(torch.logsumexp(full, 0).item(), rel=1e-12)


def test_model_step_time_by_hand():
    t = voh.model_step_time([1, 4], n_kernels=100, launch_s=1e-5, weight_bytes=1000,
                           kv_bytes_per_token=10, context_len=5, bandwidth=1e6)
    work = [(1000 + 1 * 50) / 1e6, (1000 + 4 * 50) / 1e6]
    assert t["work"].tolist() == pytest.approx(work)
    assert t["eager"].tolist() == pytest.approx([1e-3 + w for w in work])
    assert t["graphs"].tolist() == pytest.approx([1e-5 + w for w in work])


# ---- GPU results -------------------------------------------------------------------------
def test_load_the_committed_gpu_results():
    rows = vgr.load_gpu_results()
    by_requests = {r["requests"]: r for r in rows if r["file"].startswith("gpu_bench_h200")}
    assert by_requests[256]["output_tok_s"] == pytest.approx(1290.7, abs=0.1)
    assert by_requests[64]["output_tok_s"] == pytest.approx(421.3, abs=0.1)
    assert {by_requests[n]["device"] for n in (64, 256)} == {"NVIDIA H200"}
    assert {by_requests[n]["date"] for n in (64, 256)} == {"2026-11-28"}


def test_load_an_m4_matrix(tmp_path):
    (tmp_path / "README.md").write_text("# GPU results (some GPU, 2030-01-02)\n")
    (tmp_path / "m4_x.json").write_text(json.dumps({
        "created": "2031-05-06T07:08:09+00:00", "mode": "qwen3-0.6b",
        "machine": {"device": "cuda", "gpu_name": "NVIDIA X100"},
        "workloads": {"full": {"num_requests": 256}, "subset": {"num_requests": 64}},
        "configs": [{"name": "triton-graphs", "workload": "full"},
                    {"name": "transformers@subset", "workload": "subset"}],
        "results": {"triton-graphs": {"status": "ok", "output_tok_s": 5000.0},
                    "transformers@subset": {"status": "partial", "output_tok_s": 10.0}}}))
    rows = vgr.load_gpu_results(tmp_path)
    assert rows == [
        {"file": "m4_x.json", "device": "NVIDIA X100", "date": "2031-05-06",
         "config": "triton-graphs", "requests": 256, "status": "ok", "output_tok_s": 5000.0},
        {"file": "m4_x.json", "device": "NVIDIA X100", "date": "2031-05-06",
         "config": "transformers@subset", "requests": 64, "status": "partial",
         "output_tok_s": None}]
    assert len(vgr.plot_gpu_results(rows).axes[0].patches) == 1
    assert vgr.load_gpu_results(tmp_path / "missing") == []


# ---- engine decode timing (the notebook's GPU cells, here on the CPU) ----------------------
def test_time_engine_decode(tiny_model_dir):
    engine = LLMEngine.from_kwargs(str(tiny_model_dir("llama-gqa2-tied")),
                                   skip_tokenizer_init=True, dtype="float32", max_num_seqs=4,
                                   max_model_len=64, num_kv_blocks=64, block_size=4,
                                   attention_backend="sdpa")
    row = vcg.time_engine_decode(engine, batch=3, steps=3, prompt_len=5)
    assert row["batch"] == 3 and row["steps"] == 3 and row["ms_per_step"] > 0
    assert row["cuda_graph_status"].startswith("off") or torch.cuda.is_available()
    assert not engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="max_num_seqs=4"):
        vcg.time_engine_decode(engine, batch=5)
    fig = vcg.plot_engine_decode([dict(row, config="sdpa"), dict(row, batch=1, config="sdpa")])
    assert len(fig.axes[0].lines) == 1


# ---- figures -----------------------------------------------------------------------------
def test_plots_draw():
    from matplotlib.figure import Figure

    rows = [{"backend": b, "batch": n, "context": 64, "ms": n * k}
            for k, b in enumerate(["naive", "sdpa"], 1) for n in (1, 2, 4)]
    rows.append({"backend": "flex", "batch": 4, "context": 64, "ms": None, "note": "skipped"})
    fig = vda.plot_decode_latency(rows, "batch")
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2
    assert "context 64" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="expected 'batch' or 'context'"):
        vda.plot_decode_latency(rows, "heads")
    per_op = {"elements": torch.tensor([1, 1024, 1 << 20]).numpy(),
              "seconds": torch.tensor([3e-6, 3e-6, 1e-3]).numpy(),
              "bytes": 12 * torch.tensor([1, 1024, 1 << 20]).numpy()}
    assert len(voh.plot_time_per_op(per_op).axes[0].lines) == 3
    counts = {"sdpa": {1: {"kernels": 100}, 4: {"kernels": 120}},
              "triton": {1: {"kernels": 80}, 4: {"kernels": 80}}}
    assert len(voc.plot_op_counts(counts).axes[0].lines) == 2
    modelled = voh.model_step_time([1, 8, 64], 1000, 1e-5, 1e9, 1e5, 1024, 4.8e12)
    assert len(voh.plot_step_time_model(modelled).axes[0].lines) == 3
    fig = vcg.plot_bucket_padding(64)
    assert len(fig.axes[0].patches) == 64 and len(fig.axes) == 2


# ---- labs --------------------------------------------------------------------------------
def test_checks_pass_the_right_answers(capsys):
    assert check_bucket(48) and check_padding_rows(11)
    assert check_online_softmax(4.0, 3 * math.exp(-2) + math.exp(-3) + 1 + math.exp(-1))
    assert check_online_softmax(4, 1.824)  # three decimals is close enough
    assert check_graph_speedup(6.0 / 1.208) and check_graph_speedup(4.97)
    assert capsys.readouterr().out.count("Correct") == 6
    assert check_bucket(16, batch=9, max_batch=64) and check_padding_rows(0, batch=8)
    assert check_online_softmax(1.0, 2.0, m=float("-inf"), l=0.0, scores=[1.0, 1.0])
    assert check_graph_speedup(2.0, kernels=12, launch_us=100, work_ms=1.0)  # 2.2 / 1.1


def test_checks_say_not_answered(capsys):
    assert not check_bucket(None)
    assert not check_padding_rows(None)
    assert not check_online_softmax(None, None)
    assert not check_online_softmax(4.0, None)
    assert not check_graph_speedup(None)
    assert capsys.readouterr().out.count("Not answered yet") == 5


@pytest.mark.parametrize("check, answer, hint", [
    (check_bucket, 37, "fixed shapes"),
    (check_bucket, 64, "largest bucket"),
    (check_bucket, 40, "not multiples of 8"),
    (check_bucket, 32, "too small"),
    (check_bucket, 50, "smallest captured batch size"),
    (check_bucket, "48", "not a number"),
    (check_padding_rows, 0, "padded up to its bucket"),
    (check_padding_rows, 27, "largest bucket"),
    (check_padding_rows, 48, "the bucket itself"),
    (check_padding_rows, 5, "bucket below it"),
    (check_padding_rows, 3, "padding rows = "),
    (check_graph_speedup, 4.0, "launches / work"),
    (check_graph_speedup, 1.208 / 6.0, "upside down"),
    (check_graph_speedup, 599, "launches saved"),
    (check_graph_speedup, 4.8, "milliseconds of launches"),
    (check_graph_speedup, 1.25, "still does the work"),
    (check_graph_speedup, 2.0, "eager = kernels"),
])
def test_checks_explain_wrong_answers(check, answer, hint):
    with pytest.raises(AssertionError, match=hint):
        check(answer)


@pytest.mark.parametrize("new_max, new_sum, hint", [
    (2.0, 1.8, "larger of the two"),
    (8.0, 1.8, "not their sum"),
    (3.0, 1.8, "new max = max"),
    (4.0, 3 + math.exp(-3) + 1 + math.exp(-1), "rescale it"),
    (4.0, 3 + math.exp(-1) + math.exp(2) + math.exp(1), "must use the new max"),
    (4.0, 3 * math.exp(2) + math.exp(-3) + 1 + math.exp(-1), "not its inverse"),
    (4.0, 3 + math.exp(1) + math.exp(4) + math.exp(3), "subtract the max"),
    (4.0, math.exp(-3) + 1 + math.exp(-1), "the tile alone"),
    (4.0, 2.5, "new sum = "),
    (4.0, "1.8", "not a number"),
])
def test_online_softmax_check_explains(new_max, new_sum, hint):
    with pytest.raises(AssertionError, match=hint):
        check_online_softmax(new_max, new_sum)
