"""CPU speed: folo_edu against transformers at 1 and 2 threads, idle and with a busy neighbour.

    folo-edu bench --workload cpu-speed       (about 15-20 minutes on 2 cores)

A learner's laptop is never idle, so every comparison runs in four cells: torch
threads 1 and 2, each alone and beside a *neighbour*, another Python process doing
torch matmuls on every core for as long as the cell runs. In each cell, on the same
requests, in the same process:

  folo_edu            LLM.generate on every request at once (auto backends: on a CPU, the
                      numba attention kernel and the numba decode matmul)
  transformers        generate on static batches of 16, left-padded (the classic baseline)
and, in the idle cells of ``full_threads`` only (1 thread; they are long, and the other
cells compare the headline pair):
  folo_edu torch      the same engine with neither kernel (sdpa attention, which gathers
                      the paged K/V, and torch's matmul): what the two kernels are worth
  transformers CB     transformers' own continuous batching (generate_batch's manager)
  transformers 1-by-1 generate on a few requests one at a time, extrapolated
  single decode       one request alone: decode tokens/s of each engine (prefill excluded)

Then one decode step at 8 and at 64 running requests (context 60-500 tokens, KV content
random: only the time matters) with each kernel on and off, for MFU and to say what each
kernel is worth. Ratios are taken inside a cell, never across cells.
"""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from folo_edu.bench.machine import load_average, machine_info, matmul_peak, source_version
from folo_edu.bench.metrics import agreement, median, mfu, ratio, save_json, timestamp
from folo_edu.bench.runners import FoloRunner, HFRunner
from folo_edu.bench.suites import _evenly, _hf_single
from folo_edu.bench.workloads import (BenchRequest, describe, offline_workload,
                                      special_token_ids_of)

# The neighbour: torch matmuls on every core, as a notebook or a training run beside us.
# It stops by itself when the bench dies (its parent changes), even if killed outright.
NEIGHBOUR = ("import os, torch\nparent = os.getppid()\na = torch.randn(512, 512)\n"
             "while os.getppid() == parent:\n    a @ a\n")


@dataclass
class CpuSpeedConfig:
    model: str | None = None
    threads: tuple[int, ...] = (1, 2)
    num_requests: int = 16
    prompt_lens: tuple[int, int] = (16, 128)
    output_lens: tuple[int, int] = (16, 96)
    repeats: int = 3                  # folo_edu vs static batches, idle cells
    busy_repeats: int = 1             # the same pair beside the neighbour (7x slower)
    # Thread counts whose idle cell also runs folo_edu torch, transformers CB, one at a
    # time and single decode; the others run the headline pair only, busy_repeats times (2 threads
    # on the shared 2-core course machine ran 6x slower than 1, even with nothing beside).
    full_threads: tuple[int, ...] = (1,)
    busy_cells: bool = True           # False: the idle cells only (a long workload)
    hf_batch_size: int = 16
    hf_single_sample: int = 3
    single_new_tokens: int = 48
    max_num_seqs: int = 64
    max_model_len: int = 1024
    decode_batches: tuple[int, ...] = (8, 64)   # MFU goal: at 64
    decode_context: tuple[int, int] = (60, 500)
    seed: int = 0
    output: str | None = "benchmarks/results/cpu_speed_cpu.json"


@contextmanager
def neighbour(busy: bool):
    """A second process doing torch matmuls while the block runs (nothing when idle)."""
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if busy else None
    try:
        if proc:
            time.sleep(3)  # let it import torch and start multiplying
        yield
    finally:
        if proc:
            proc.kill()
            proc.wait()


def _tok_s(reqs: list[BenchRequest], run: dict) -> tuple[float, float]:
    useful = sum(r.max_tokens for r in reqs)
    return useful / run["wall_s"], useful / run["cpu_s"]


def _check(name: str, reqs, token_ids) -> None:
    for r, toks in zip(reqs, token_ids):
        if len(toks) != r.max_tokens:
            raise RuntimeError(f"{name} produced {len(toks)} tokens; expected {r.max_tokens}")


def _static(hf: HFRunner, reqs, batch: int) -> dict:
    runs = [hf.run_static_batch(reqs[i:i + batch]) for i in range(0, len(reqs), batch)]
    return {"wall_s": sum(r["wall_s"] for r in runs), "cpu_s": sum(r["cpu_s"] for r in runs),
            "token_ids": [t for r in runs for t in r["token_ids"]]}


def _one_at_a_time(hf: HFRunner, reqs, k: int) -> dict:
    """k requests spread over the output lengths, alone; tok/s extrapolated to all
    (the offline suite's sample: suites._evenly and suites._hf_single)."""
    by_len = sorted(range(len(reqs)), key=lambda i: (reqs[i].max_tokens, i))
    idx = sorted(by_len[j] for j in _evenly(len(reqs), k))
    rec, _ = _hf_single(hf, reqs, idx, sum(r.max_tokens for r in reqs))
    return rec


def _timed(fn, name: str, reqs) -> tuple[dict, list]:
    run = fn()
    _check(name, reqs, run["token_ids"])
    tps, tps_cpu = _tok_s(reqs, run)
    return {"wall_s": run["wall_s"], "output_tok_s": tps, "output_tok_s_cpu": tps_cpu}, \
        run["token_ids"]


def _cell(cfg, engines, reqs, threads: int, busy: bool) -> dict:
    folo, folo_torch, hf = engines
    torch.set_num_threads(threads)
    cell = {"threads": threads, "neighbour": busy, "load_average_at_start": load_average()}
    t0 = time.perf_counter()
    with neighbour(busy):
        runs = {"folo_edu": [], "hf_static": []}
        full = not busy and threads in cfg.full_threads
        for _ in range(cfg.repeats if full else cfg.busy_repeats):  # alternate the pair
            rec, folo_tokens = _timed(lambda: folo.run_batch(reqs), "folo_edu", reqs)
            runs["folo_edu"].append(rec)
            rec, static_tokens = _timed(lambda: _static(hf, reqs, cfg.hf_batch_size),
                                        "transformers", reqs)
            runs["hf_static"].append(rec)
        cell["agreement_folo_vs_hf_static"] = agreement(folo_tokens, static_tokens)
        if full:
            rec, torch_tokens = _timed(lambda: folo_torch.run_batch(reqs), "folo_edu torch",
                                       reqs)
            runs["folo_edu_torch"] = [rec]
            cell["agreement_kernels_vs_torch"] = agreement(folo_tokens, torch_tokens)
            rec, cb_tokens = _timed(lambda: hf.run_continuous(reqs, cfg.max_num_seqs),
                                    "transformers continuous batching", reqs)
            runs["hf_continuous"] = [rec]
            cell["agreement_folo_vs_hf_continuous"] = agreement(folo_tokens, cb_tokens)
            runs["hf_one_at_a_time"] = [_one_at_a_time(hf, reqs, cfg.hf_single_sample)]
            cell["single_decode"] = _single_decode(cfg, folo, hf, reqs)
    cell["medians"] = {k: {m: median(r[m] for r in v) for m in ("output_tok_s",
                                                               "output_tok_s_cpu")}
                       for k, v in runs.items()}
    cell["runs"] = runs
    tps = {k: v["output_tok_s"] for k, v in cell["medians"].items()}
    cell["ratios"] = {f"folo_edu_over_{k}": ratio(tps["folo_edu"], v)
                      for k, v in tps.items() if k != "folo_edu"}
    cell["pair_ratios_folo_edu_over_hf_static"] = pair_ratios(runs)
    cell["load_average_at_end"] = load_average()
    cell["wall_s"] = time.perf_counter() - t0
    return cell


def pair_ratios(runs: dict) -> dict:
    """folo_edu / static batches for each repeat (the two ran back to back), and their
    median: steadier than a ratio of medians when the load swings between repeats."""
    pairs = [ratio(f["output_tok_s"], h["output_tok_s"])
             for f, h in zip(runs["folo_edu"], runs["hf_static"])]
    return {"each": pairs, "median": median(pairs)}


def _single_decode(cfg, folo, hf, reqs) -> dict:
    """Decode tok/s of one request alone, each engine in turn on the same 2 prompts."""
    prompts = [BenchRequest(r.prompt_token_ids, cfg.single_new_tokens) for r in reqs[:2]]
    f = [folo.run_one(p)["decode_tok_s"] for p in prompts]
    h = [hf.run_one(p)["decode_tok_s"] for p in prompts]
    return {"folo_edu_tok_s": median(f), "hf_tok_s": median(h),
            "ratio": ratio(median(f), median(h)), "runs": {"folo_edu": f, "hf": h}}


def decode_step(folo: FoloRunner, batch: int, context: tuple[int, int], seed: int,
                repeats: int = 5) -> dict:
    """Seconds of one decode step with ``batch`` running requests of random context
    lengths, through the engine's model runner (the KV cache holds random numbers)."""
    import random

    from folo_edu.engine.scheduler_output import ScheduledSequence, SchedulerOutput
    from folo_edu.sampling_params import SamplingParams

    runner = folo.llm.llm_engine.model_runner
    rng = random.Random(seed)
    lens = sorted(rng.randint(*context) for _ in range(batch))
    blocks = list(range(runner.kv_cache.shape[2]))
    rng.shuffle(blocks)
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    seqs = []
    for b, n in enumerate(lens):
        need = -(-(n + 1) // runner.block_size)
        table, blocks = blocks[:need], blocks[need:]
        seqs.append(ScheduledSequence(f"step-{b}", [5], n, table, True, params, [1] * n, [2]))
    step = SchedulerOutput(seqs)
    runner.execute(step)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.execute(step)
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "context_lens": lens, "step_s_runs": times,
            "step_s": median(times)}


# (attention backend, linear backend) of each decode-step measurement; the first is "auto".
DEFAULT_KERNELS = "numba attention + numba matmul"
STEP_KERNELS = {DEFAULT_KERNELS: ("numba", "numba"),
                "numba attention + torch matmul": ("numba", "torch"),
                "sdpa attention + torch matmul": ("sdpa", "torch")}


def _decode_steps(cfg, engines, threads: int, num_parameters: int, peak: float) -> list[dict]:
    """The decode step at each of cfg.decode_batches, with each kernel pairing in turn
    (the engines' backends are switched between measurements, then restored)."""
    folo, folo_torch = engines
    runner = folo.llm.llm_engine.model_runner
    kernel = runner.model.linear_kernel
    steps = []
    for batch in cfg.decode_batches:
        for label, (attention, linear) in STEP_KERNELS.items():
            engine = folo if attention == "numba" else folo_torch
            if engine is folo:
                runner.model.set_linear_kernel(kernel if linear == "numba" else None)
            used = engine.llm.llm_engine.model_runner  # what actually ran, not the label
            ran = (used.backend.name, "numba" if used.model.linear_kernel else "torch")
            s = decode_step(engine, batch, cfg.decode_context, cfg.seed)
            runner.model.set_linear_kernel(kernel)
            steps.append({"threads": threads, "kernels": label, "attention": ran[0],
                          "linear": ran[1], "as_labelled": ran == (attention, linear),
                          "mfu": mfu(num_parameters, batch / s["step_s"], peak), **s})
            print(f"decode step, {threads} thread(s), {batch} requests, {label}: "
                  f"{s['step_s']:.3f} s", flush=True)
    return steps


def bf16_check(hidden: int, intermediate: int, repeats: int = 20) -> dict:
    """Is bf16 worth it on this CPU? One MLP up-projection ([M, hidden] x [hidden,
    2 x intermediate]) in float32 and bfloat16, at M = 1 (one decode) and 64 (a batch).
    bf16 halves the bytes of the weights but is only fast on CPUs with native bf16
    arithmetic (AVX512-BF16 or AMX); elsewhere torch converts and it is slower."""
    from folo_edu.bench.machine import _cpu_flags

    flags = _cpu_flags()
    out = {"native_bf16_flags": [f for f in flags if f in ("avx512_bf16", "amx_bf16")]}
    for rows in (1, 64):
        ms = {}
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, hidden, dtype=dtype)
            w = torch.randn(2 * intermediate, hidden, dtype=dtype)
            torch.nn.functional.linear(x, w)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - t0)
            ms[str(dtype).removeprefix("torch.")] = 1e3 * median(times)
        out[f"rows_{rows}_ms"] = ms
        out[f"rows_{rows}_bf16_speedup"] = ms["float32"] / ms["bfloat16"]
    return out


def run(cfg: CpuSpeedConfig) -> dict:
    from folo_edu.models.loader import resolve_model_path

    t_start = time.perf_counter()
    device, path = torch.device("cpu"), str(resolve_model_path(cfg.model))
    folo = FoloRunner(path, device, max_model_len=cfg.max_model_len,
                      max_num_seqs=cfg.max_num_seqs)
    folo_torch = FoloRunner(path, device, max_model_len=cfg.max_model_len,
                            max_num_seqs=cfg.max_num_seqs, attention_backend="sdpa",
                            linear_backend="torch")
    hf = HFRunner(path, device, torch.float32)
    hf_config = folo.llm.llm_engine.config.model_config.hf_config
    reqs = offline_workload(hf_config.vocab_size, special_token_ids_of(path, hf_config),
                            cfg.num_requests, cfg.prompt_lens, cfg.output_lens, cfg.seed)
    result = {"benchmark": "cpu_speed", "timestamp": timestamp(), "source": source_version(),
              "machine": machine_info(device), "config": asdict(cfg),
              "load_average_at_start": load_average(),
              "model": {"name": hf_config.name_or_path or path,
                        "num_parameters": hf.num_parameters},
              "folo_edu_settings": folo.settings, "transformers_settings": hf.settings,
              "workload": describe(reqs), "method": __doc__}
    warm = [BenchRequest(r.prompt_token_ids[:16], 4) for r in reqs[:4]]
    for run_batch in (folo.run_batch, folo_torch.run_batch, hf.run_static_batch):
        run_batch(warm)
    hf.run_continuous(warm, cfg.max_num_seqs)
    torch.set_num_threads(1)
    result["bf16_check"] = bf16_check(hf_config.hidden_size, hf_config.intermediate_size)
    cells, steps, peaks = [], [], {}
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        peaks[threads] = matmul_peak(device, torch.float32, 2048, 5)
        steps += _decode_steps(cfg, (folo, folo_torch), threads, hf.num_parameters,
                               peaks[threads]["gflops_median"] * 1e9)
        for busy in (False, True) if cfg.busy_cells else (False,):
            print(f"cell: {threads} thread(s), {'busy neighbour' if busy else 'idle'} ...",
                  flush=True)
            cells.append(_cell(cfg, (folo, folo_torch, hf), reqs, threads, busy))
            print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in cells[-1]["ratios"].items()
                                   if v is not None), flush=True)
            if cfg.output and cfg.output != "-":  # a long run keeps what it has measured
                save_json(cfg.output, {**result, "matmul_peak": peaks, "decode_step": steps,
                                       "cells": cells, "complete": False})
    result.update({"complete": True, "matmul_peak": peaks, "decode_step": steps,
                   "cells": cells,
                   "goals": _goals(cells, steps), "load_average_at_end": load_average(),
                   "bench_wall_s": time.perf_counter() - t_start})
    if cfg.output and cfg.output != "-":
        print(f"saved {save_json(cfg.output, result)}")
    return result


def _goals(cells: list[dict], steps: list[dict]) -> list[dict]:
    """Issue 16's goals, each checked in every cell that measures it."""
    def goal(text, values, threshold):
        values = [v for v in values if v is not None]
        return {"goal": text, "values": values,
                "met": bool(values) and min(values) >= threshold}

    idle = [c for c in cells if not c["neighbour"]]
    full = [c for c in idle if "single_decode" in c]
    busy = [c for c in cells if c["neighbour"]]
    return [
        goal(">= 3x transformers static batches of 16 (idle)",
             [c["ratios"]["folo_edu_over_hf_static"] for c in idle], 3.0),
        goal(">= 2.5x transformers continuous batching (idle)",
             [c["ratios"]["folo_edu_over_hf_continuous"] for c in full], 2.5),
        goal("single-request decode >= 1.3x transformers (idle)",
             [c["single_decode"]["ratio"] for c in full], 1.3),
        goal("MFU >= 30% at 64 running requests (decode step, default backends)",
             [s["mfu"] for s in steps if s["kernels"] == DEFAULT_KERNELS
              and s["batch"] == 64], 0.30),
        goal("never behind transformers static batches with a busy neighbour",
             [c["ratios"]["folo_edu_over_hf_static"] for c in busy], 1.0),
    ]
