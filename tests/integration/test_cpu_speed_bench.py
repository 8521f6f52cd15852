"""`folo-edu bench --workload cpu-speed` end to end on a tiny model: every cell runs,
every engine yields each request's exact token count, and the JSON holds the matrix."""
from __future__ import annotations

import json

from folo_edu.bench import cpu_speed


def test_cpu_speed_matrix_on_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "cpu_speed.json"
    cfg = cpu_speed.CpuSpeedConfig(
        model=str(tiny_model_dir("llama-gqa2-tied")), threads=(1,), num_requests=4,
        prompt_lens=(4, 12), output_lens=(2, 6), repeats=2, hf_single_sample=2,
        single_new_tokens=4, max_model_len=128, decode_batches=(2, 4), decode_context=(5, 20),
        output=str(out))
    cpu_speed.run(cfg)
    res = json.loads(out.read_text())
    cells = {c["neighbour"]: c for c in res["cells"]}
    assert set(cells) == {False, True} and all(c["threads"] == 1 for c in cells.values())
    idle, busy = cells[False], cells[True]
    assert len(idle["runs"]["folo_edu"]) == 2 and len(busy["runs"]["folo_edu"]) == 1
    assert set(idle["ratios"]) == {"folo_edu_over_hf_static", "folo_edu_over_folo_edu_torch",
                                   "folo_edu_over_hf_continuous",
                                   "folo_edu_over_hf_one_at_a_time"}
    assert set(busy["ratios"]) == {"folo_edu_over_hf_static"}
    assert all(r > 0 for c in cells.values() for r in c["ratios"].values())
    assert len(idle["pair_ratios_folo_edu_over_hf_static"]["each"]) == 2
    # Random tiny weights in float32: the engines agree exactly on so few tokens.
    assert idle["agreement_folo_vs_hf_static"]["identical_sequences"] == 4
    assert idle["agreement_kernels_vs_torch"]["identical_sequences"] == 4
    assert idle["agreement_folo_vs_hf_continuous"]["identical_sequences"] == 4
    steps = res["decode_step"]
    assert [(s["batch"], s["attention"], s["linear"]) for s in steps] == [
        (b, a, m) for b in (2, 4) for a, m in
        (("numba", "numba"), ("numba", "torch"), ("sdpa", "torch"))]
    assert all(s["as_labelled"] and s["step_s"] > 0 and len(s["context_lens"]) == s["batch"]
               for s in steps)
    bf16 = res["bf16_check"]
    assert bf16["rows_1_bf16_speedup"] > 0 and set(bf16["rows_64_ms"]) == {"float32", "bfloat16"}
    assert len(res["goals"]) == 5 and all(isinstance(g["met"], bool) for g in res["goals"])
