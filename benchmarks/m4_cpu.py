"""M4 on a CPU: attention backends and torch.compile, against transformers, in one run.

    .venv/bin/python benchmarks/m4_cpu.py            # -> benchmarks/results/m4_cpu.json

The default model (SmolLM2-135M-Instruct, float32). Every configuration is a fresh
engine, warmed up (that is where torch.compile compiles), then timed on:
  single   one request alone: decode tokens/s (the M1 workload, shorter)
  batch    a batch of requests added at once: output tokens/s (the M2 workload, smaller)
Configurations and transformers are interleaved, repeat by repeat, so that a noisy
neighbour slows them alike; the figures are medians over the repeats. The triton
backend is left out: on a CPU it runs in Triton's interpreter, which measures Python.
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from folo_edu.bench.machine import load_average, machine_info, source_version
from folo_edu.bench.metrics import agreement, median, rounded, save_json, timestamp
from folo_edu.bench.runners import FoloRunner, HFRunner
from folo_edu.bench.workloads import (BenchRequest, describe, offline_workload,
                                      single_workload, special_token_ids)
from folo_edu.models.loader import resolve_model_path

CONFIGS = {  # name -> engine keyword arguments
    "sdpa": {"attention_backend": "sdpa"},
    "naive": {"attention_backend": "naive"},
    "paged-torch": {"attention_backend": "paged-torch"},
    # flex+compile (measured in the committed m4_cpu.json) is refused on a CPU since issue
    # 16: minutes of compiling. numba is the CPU kernel that replaced it.
    "numba": {"attention_backend": "numba"},
    "sdpa+compile": {"attention_backend": "sdpa", "torch_compile": True},
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-requests", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/m4_cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, path = torch.device("cpu"), str(resolve_model_path(None))

    hf = HFRunner(path, device, torch.float32)
    vocab = hf.model.config.vocab_size
    specials = special_token_ids(None, hf.model.config)
    single = single_workload(vocab, specials, 2, 64, 128, args.new_tokens)
    batch = offline_workload(vocab, specials, args.batch_requests, (16, 128), (16, 64), seed=1)
    result = {"benchmark": "m4_cpu", "timestamp": timestamp(), "source": source_version(),
              "machine": machine_info(device), "load_average_at_start": load_average(),
              "threads": args.threads, "repeats": args.repeats, "model": "SmolLM2-135M-Instruct",
              "dtype": "float32", "workloads": {"single": describe(single),
                                                "batch": describe(batch)},
              "configs": {}}

    engines, warm = {}, BenchRequest(single[0].prompt_token_ids[:32], 8)
    for name in args.configs:
        t0 = time.perf_counter()
        engines[name] = FoloRunner(path, device, "float32", max_model_len=512, max_num_seqs=16,
                                   **CONFIGS[name])
        engines[name].run_one(warm)               # compiles (if asked) for one token...
        engines[name].run_batch(batch)            # ...and for every batch size it will see
        result["configs"][name] = {"settings": engines[name].settings,
                                   "build_and_warmup_s": time.perf_counter() - t0}
        print(f"{name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
        gc.collect()
    hf.run_one(warm)

    runs = {name: {"single": [], "batch": []} for name in [*engines, "transformers"]}
    tokens = {}
    for rep in range(args.repeats):
        for name, folo in engines.items():
            one = [folo.run_one(r) for r in single]
            runs[name]["single"].append(median([r["decode_tok_s"] for r in one]))
            b = folo.run_batch(batch)
            runs[name]["batch"].append(b["output_tokens"] / b["wall_s"])
            tokens[name] = [r["token_ids"] for r in one] + b["token_ids"]
        one = [hf.run_one(r) for r in single]
        runs["transformers"]["single"].append(median([r["decode_tok_s"] for r in one]))
        tokens["transformers"] = [r["token_ids"] for r in one]
        print(f"repeat {rep + 1}/{args.repeats}: "
              + ", ".join(f"{n} {runs[n]['single'][-1]:.1f}" for n in runs), flush=True)

    hf_single = median(runs["transformers"]["single"])
    base = runs.get("sdpa")
    for name in engines:
        c = result["configs"][name]
        c["single_decode_tok_s"] = median(runs[name]["single"])
        c["batch_output_tok_s"] = median(runs[name]["batch"])
        c["runs"] = runs[name]
        c["single_vs_transformers"] = c["single_decode_tok_s"] / hf_single
        if base:
            c["single_vs_sdpa"] = c["single_decode_tok_s"] / median(base["single"])
            c["batch_vs_sdpa"] = c["batch_output_tok_s"] / median(base["batch"])
        c["greedy_tokens_vs_transformers"] = agreement(tokens[name][:len(single)],
                                                       tokens["transformers"])
    result["transformers"] = {"single_decode_tok_s": hf_single, "runs": runs["transformers"]}
    result["load_average_at_end"] = load_average()
    save_json(args.out, rounded(result))
    for name in engines:
        c = result["configs"][name]
        print(f"{name:14s} single {c['single_decode_tok_s']:6.2f} tok/s "
              f"({c['single_vs_transformers']:.2f}x transformers)  "
              f"batch {c['batch_output_tok_s']:6.2f} tok/s")
    print(f"{'transformers':14s} single {hf_single:6.2f} tok/s   -> {args.out}")


if __name__ == "__main__":
    main()
