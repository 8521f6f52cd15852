"""One GPTQ 4-bit linear layer on the CPU, one thread: the fast path against the others.

    .venv/bin/python benchmarks/m7_kernels_cpu.py              # writes the JSON
    .venv/bin/python benchmarks/m7_kernels_cpu.py --quick      # fewer repeats, no JSON

The default model's MLP shapes (hidden 576, intermediate 1536): the gate/up projection
(576 -> 1536) and the down projection (1536 -> 576), for a decode step (x [1, in]) and a
batch of 64 tokens (x [64, in]). Random 4-bit GPTQ tensors (asymmetric zeros), group
sizes 64 and 128 (128 does not divide 576: the fifth group of the 576-wide layer holds 64
features; the fast path pads it), act-order on and off. Methods, y = x @ W.T in float32:

    fp32_linear     F.linear with the dequantized weight kept in float32 (the unquantized
                    model's cost: 4 bytes per weight)
    bf16_linear     F.linear in bfloat16 with a bfloat16 weight (casts of x and y included)
    reference       dequantize_gptq(..., float32) then F.linear, per call (QuantLinear's
                    reference path)
    int4_cpu        kernels.int4_cpu_matmul: torch's int4 op in bfloat16, x cast to
                    bfloat16 and y back to float32 inside the timed call
    int4_cpu_fp32   the same op computing in float32 (its scalar loop on x86; decode only)

Timings: after warm-up, methods run interleaved (one call each, rotating order); the
median wall time and thread CPU time of each are reported, in microseconds. Errors: relative Frobenius error
of each method against the float64 reference x @ dequantize_gptq(...).T. Memory: bytes
of the weight as each path holds it. Writes benchmarks/results/m7_kernels_cpu.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from folo_edu.bench.machine import load_average, machine_info, source_version  # noqa: E402
from folo_edu.bench.metrics import save_json, table, timestamp  # noqa: E402
from folo_edu.quantization.kernels import int4_cpu_matmul, prepare_int4_cpu  # noqa: E402
from folo_edu.quantization.packing import dequantize_gptq, pack_gptq  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "m7_kernels_cpu.json")


def random_gptq(in_f, out_f, group_size, act_order, seed):
    gen = torch.Generator().manual_seed(seed)
    groups = -(-in_f // group_size)
    q = torch.randint(0, 16, (out_f, in_f), generator=gen)
    zeros = torch.randint(1, 16, (groups, out_f), generator=gen).float()
    scales = torch.rand(groups, out_f, generator=gen) * 0.01 + 0.001
    g_idx = torch.arange(in_f) // group_size
    if act_order:
        perm = torch.randperm(in_f, generator=gen)
        g_idx = torch.empty_like(g_idx)
        g_idx[perm] = torch.arange(in_f) // group_size
    return pack_gptq(q, scales, zeros, g_idx, bits=4)


def time_interleaved(methods: dict, repeats: dict, warmup: int = 3) -> tuple[dict, dict]:
    """Median wall and thread-CPU seconds per call of each method, calls interleaved in
    rotating order (CPU time is less disturbed by other processes on a busy machine)."""
    for f in methods.values():
        for _ in range(warmup):
            f()
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    names = list(methods)
    for r in range(max(repeats.values())):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if len(wall[name]) < repeats[name]:
                c0, t0 = time.thread_time(), time.perf_counter()
                methods[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
    return ({name: statistics.median(ts) for name, ts in wall.items()},
            {name: statistics.median(ts) for name, ts in cpu.items()})


def run_case(in_f, out_f, tokens, group_size, act_order, quick, seed=0):
    t = random_gptq(in_f, out_f, group_size, act_order, seed)
    w64 = dequantize_gptq(**t, bits=4, dtype=torch.float64)
    w32 = w64.float()
    wbf = w32.bfloat16()
    state = prepare_int4_cpu(**t, group_size=group_size)
    state32 = prepare_int4_cpu(**t, group_size=group_size, compute_dtype=torch.float32)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed + 1))
    methods = {
        "fp32_linear": lambda: F.linear(x, w32),
        "bf16_linear": lambda: F.linear(x.bfloat16(), wbf).float(),
        "reference": lambda: F.linear(x, dequantize_gptq(**t, bits=4, dtype=torch.float32)),
        "int4_cpu": lambda: int4_cpu_matmul(x, state),
    }
    fast_n = (30 if quick else 300) if tokens == 1 else (5 if quick else 40)
    repeats = {"fp32_linear": fast_n, "bf16_linear": fast_n, "int4_cpu": fast_n,
               "reference": 5 if quick else 30}
    if tokens == 1:  # the scalar float32 loop: ~40x F.linear, too slow for the batch
        methods["int4_cpu_fp32"] = lambda: int4_cpu_matmul(x, state32)
        repeats["int4_cpu_fp32"] = 3 if quick else 15
    med, med_cpu = time_interleaved(methods, repeats)
    ref = x.double() @ w64.T
    err = {name: ((f().double() - ref).norm() / ref.norm()).item()
           for name, f in methods.items()}
    gptq_bytes = sum(v.nbytes for v in t.values())
    return {
        "layer": f"{in_f}->{out_f}", "in_features": in_f, "out_features": out_f,
        "tokens": tokens, "group_size": group_size, "act_order": act_order,
        "op_group_size": state.op_group_size, "gathers_x": state.src is not None,
        "median_us": {k: v * 1e6 for k, v in med.items()},
        "median_cpu_us": {k: v * 1e6 for k, v in med_cpu.items()},
        "speedup_vs_fp32_linear": {k: med["fp32_linear"] / v for k, v in med.items()},
        "cpu_speedup_vs_fp32_linear": {k: med_cpu["fp32_linear"] / v
                                       for k, v in med_cpu.items()},
        "repeats": repeats,
        "rel_error_vs_float64": err,
        "weight_bytes": {"fp32": in_f * out_f * 4, "bf16": in_f * out_f * 2,
                         "gptq_tensors": gptq_bytes, "int4_cpu_state": state.nbytes()},
        "int4_cpu_bytes_over_fp32": state.nbytes() / (in_f * out_f * 4),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; no JSON written")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = load_average()
    cases = []
    for in_f, out_f in ((576, 1536), (1536, 576)):
        for tokens in (1, 64):
            for group_size, act in ((128, False), (64, False), (128, True)):
                c = run_case(in_f, out_f, tokens, group_size, act, args.quick)
                cases.append(c)
                m = c["median_us"]
                print(f"{c['layer']:>9} T={tokens:<2} g{group_size}{' act' if act else '    '} "
                      + "  ".join(f"{k} {v:,.0f}us" for k, v in m.items()), flush=True)
    rows = [[c["layer"], c["tokens"], c["group_size"], c["act_order"],
             c["median_us"]["fp32_linear"], c["median_us"]["bf16_linear"],
             c["median_us"]["reference"], c["median_us"]["int4_cpu"],
             c["median_us"].get("int4_cpu_fp32"),
             c["speedup_vs_fp32_linear"]["int4_cpu"], c["cpu_speedup_vs_fp32_linear"]["int4_cpu"],
             c["rel_error_vs_float64"]["int4_cpu"],
             c["int4_cpu_bytes_over_fp32"]] for c in cases]
    print(table(["layer", "T", "group", "act", "fp32 us", "bf16 us", "ref us", "int4 us",
                 "int4-fp32 us", "int4 x fp32", "(cpu time)", "int4 rel err", "bytes/fp32"], rows))
    data = {
        "benchmark": "m7_kernels_cpu", "time": timestamp(),
        "what": "one 4-bit GPTQ linear layer, y = x @ W.T, float32 in and out, 1 thread",
        "units": "median microseconds per call; errors relative to float64",
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": machine_info(torch.device("cpu")),
        "source": source_version(),
        "load_average_before": load_before, "load_average_after": load_average(),
        "cases": cases,
    }
    print(f"load average before {load_before}, after {data['load_average_after']}")
    if not args.quick:
        print("wrote", save_json(args.out, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
