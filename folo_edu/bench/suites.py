"""The two benchmark suites behind ``folo-edu bench``.

single  (M1)  one request at a time: TTFT and decode tokens/s, folo_edu vs transformers
offline (M2)  64 requests at once: folo_edu continuous batching vs transformers static
              batches (left-padded) vs transformers one request at a time

Both sides load the same checkpoint folder in the same dtype, run in the same process
with the same torch threads, are warmed up once, and are timed alternately so that a
burst of load from other processes hits both. Results go to a JSON file with the
machine, the config, every raw run, medians and ratios.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from folo_edu.bench.machine import (load_average, machine_info, matmul_peak,
                                    resolve_bench_device, source_version)
from folo_edu.bench.metrics import (agreement, median, mfu, ratio, save_json, summary, table,
                                    timestamp)
from folo_edu.bench.runners import FoloRunner, HFRunner
from folo_edu.bench.workloads import (BenchRequest, describe, offline_workload,
                                      single_workload, special_token_ids)

MFU_NOTE = ("MFU = 2 x num_parameters x (useful output tokens/s) / measured matmul peak; "
            "it counts only requested output tokens (no padding, no prompt tokens, no "
            "attention score FLOPs)")


@dataclass
class BenchConfig:
    workload: str = "single"            # single | offline
    model: str | None = None            # None: the default model (download_model())
    device: str = "auto"                # cpu | cuda | auto
    dtype: str = "float32"              # both engines; "auto" = folo_edu's choice
    threads: int | None = None          # torch threads (None: leave torch's default)
    repeats: int | None = None          # None: 3 for single, 1 for offline
    seed: int = 0
    output: str | None = None           # JSON path (None: benchmarks/results/<name>.json)
    # single
    num_prompts: int = 5
    min_prompt_len: int = 64
    max_prompt_len: int = 200
    new_tokens: int = 128
    # offline
    num_requests: int = 64
    min_len: int = 16                   # prompt and output lengths: uniform in [min, max]
    max_len: int = 256
    max_num_seqs: int = 64
    hf_batch_size: int = 16
    hf_static_sample: int | None = None  # None: run every static batch
    hf_single_sample: int | None = 6     # None: run every request one at a time
    # folo_edu engine
    max_model_len: int = 1024
    kv_cache: str = "paged"
    attention_backend: str = "auto"
    # matmul peak
    matmul_n: int = 2048
    matmul_repeats: int = 10

    def default_output(self, device: torch.device) -> str:
        name = {"single": "m1_single", "offline": "m2_offline"}[self.workload]
        return str(Path("benchmarks") / "results" / f"{name}_{device.type}.json")


def _setup(cfg: BenchConfig):
    from folo_edu.models.loader import resolve_model_path

    device = resolve_bench_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    path = str(resolve_model_path(cfg.model))
    return device, path


def _peak(cfg, device, dtype) -> dict:
    return matmul_peak(device, dtype, cfg.matmul_n, cfg.matmul_repeats)


def _peak_used(before: dict, after: dict) -> tuple[float, dict]:
    """The FLOP/s MFU divides by (the median of every run before and after the
    benchmark), and the result's "matmul_peak" entry."""
    peak = median(before["gflops_runs"] + after["gflops_runs"]) * 1e9
    return peak, {"before": before, "after": after, "gflops_used": round(peak / 1e9, 2)}


def _goal(goal: str, value, threshold: float) -> dict:
    return {"goal": goal, "ratio": value, "met": (value or 0) >= threshold}


def _print_goals(res: dict) -> None:
    for g in res["goals"]:
        print(f"{g['goal']}: ratio {g['ratio']:.2f} -> {'MET' if g['met'] else 'NOT MET'}")


def _header(name: str, cfg: BenchConfig, device, path: str, folo, hf, reqs) -> dict:
    return {"benchmark": name, "timestamp": timestamp(), "source": source_version(),
            "machine": machine_info(device),
            "load_average_at_start": load_average(), "config": asdict(cfg),
            "model": {"name": Path(path).name, "num_parameters": hf.num_parameters},
            "folo_edu_settings": folo.settings, "transformers_settings": hf.settings,
            "workload": describe(reqs)}


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "token_ids"}


def _engines(cfg: BenchConfig):
    """Both engines on the same checkpoint, with the vocabulary the workloads draw from."""
    device, path = _setup(cfg)
    folo = FoloRunner(path, device, cfg.dtype, cfg.max_model_len, cfg.max_num_seqs,
                      cfg.kv_cache, cfg.attention_backend)
    hf = HFRunner(path, device, folo.llm.llm_engine.model_runner.dtype)
    hf_config = folo.llm.llm_engine.config.model_config.hf_config
    return (device, path, folo, hf, hf_config.vocab_size,
            special_token_ids(folo.llm.get_tokenizer(), hf_config))


# ---- M1: single request ----------------------------------------------------------------
def run_single(cfg: BenchConfig) -> dict:
    t_start = time.perf_counter()
    device, path, folo, hf, vocab, specials = _engines(cfg)
    dtype = folo.llm.llm_engine.model_runner.dtype
    repeats = cfg.repeats or 3
    reqs = single_workload(vocab, specials, cfg.num_prompts, cfg.min_prompt_len,
                           cfg.max_prompt_len, cfg.new_tokens, cfg.seed)
    result = _header("m1_single", cfg, device, path, folo, hf, reqs)
    peak_before = _peak(cfg, device, dtype)

    warm = BenchRequest(reqs[-1].prompt_token_ids, 16)
    folo.run_one(warm)
    hf.time_to_first_token(warm)
    hf.run_one(warm)

    runs = []
    for rep in range(repeats):
        for i, req in enumerate(reqs):
            rec = {"repeat": rep, "prompt": i, "prompt_len": req.prompt_len,
                   "order": "folo_edu first" if (rep + i) % 2 == 0 else "transformers first"}
            for side in ("folo", "hf") if (rep + i) % 2 == 0 else ("hf", "folo"):
                if side == "folo":
                    rec["folo_edu"] = folo.run_one(req)
                else:
                    ttft, ttft_cpu = hf.time_to_first_token(req)
                    rec["transformers"] = {"ttft_s": ttft, "ttft_cpu_s": ttft_cpu,
                                           **hf.run_one(req)}
            for side in ("folo_edu", "transformers"):
                n = rec[side]["num_tokens"]
                if n != req.max_tokens:
                    raise RuntimeError(f"{side} produced {n} tokens; expected {req.max_tokens}")
            rec["agreement"] = agreement([rec["folo_edu"]["token_ids"]],
                                         [rec["transformers"]["token_ids"]])
            rec["folo_edu"], rec["transformers"] = (_strip(rec["folo_edu"]),
                                                    _strip(rec["transformers"]))
            runs.append(rec)
            print(f"  repeat {rep} prompt {req.prompt_len:4d} tok: "
                  f"folo {rec['folo_edu']['decode_tok_s']:.1f} tok/s, "
                  f"hf {rec['transformers']['decode_tok_s']:.1f} tok/s", flush=True)
    peak, peak_entry = _peak_used(peak_before, _peak(cfg, device, dtype))

    def med(side, key, prompt=None):
        return median(r[side][key] for r in runs if prompt is None or r["prompt"] == prompt)

    per_prompt = []
    for i, req in enumerate(reqs):
        row = {"prompt_len": req.prompt_len, "new_tokens": req.max_tokens}
        for side in ("folo_edu", "transformers"):
            row[side] = {"ttft_s": med(side, "ttft_s", i),
                         "decode_tok_s": med(side, "decode_tok_s", i),
                         "ttft_cpu_s": med(side, "ttft_cpu_s", i),
                         "decode_tok_s_cpu": med(side, "decode_tok_s_cpu", i)}
        row["ttft_ratio_folo_over_hf"] = ratio(row["folo_edu"]["ttft_s"],
                                               row["transformers"]["ttft_s"])
        row["decode_ratio_folo_over_hf"] = ratio(row["folo_edu"]["decode_tok_s"],
                                                 row["transformers"]["decode_tok_s"])
        per_prompt.append(row)
    folo_dec, hf_dec = med("folo_edu", "decode_tok_s"), med("transformers", "decode_tok_s")
    overall = {
        side: {key: summary(r[side][key] for r in runs)
               for key in ("ttft_s", "decode_tok_s", "ttft_cpu_s", "decode_tok_s_cpu")}
        for side in ("folo_edu", "transformers")}
    overall["folo_edu"]["decode_mfu"] = mfu(hf.num_parameters, folo_dec, peak)
    overall["transformers"]["decode_mfu"] = mfu(hf.num_parameters, hf_dec, peak)
    overall.update({
        "decode_ratio_folo_over_hf": ratio(folo_dec, hf_dec),
        "decode_ratio_median_of_pairs": median(
            ratio(r["folo_edu"]["decode_tok_s"], r["transformers"]["decode_tok_s"]) for r in runs),
        "ttft_ratio_folo_over_hf": ratio(med("folo_edu", "ttft_s"), med("transformers", "ttft_s")),
        "decode_ratio_folo_over_hf_cpu_time": ratio(med("folo_edu", "decode_tok_s_cpu"),
                                                    med("transformers", "decode_tok_s_cpu")),
        "ttft_ratio_folo_over_hf_cpu_time": ratio(med("folo_edu", "ttft_cpu_s"),
                                                  med("transformers", "ttft_cpu_s")),
    })
    result.update({
        "method": {
            "ttft_folo_edu": "add_request to the step() that returns the first token",
            "ttft_transformers": "generate(max_new_tokens=1), end to end",
            "decode_tok_s": "(N-1)/(t_N - t_1), t_k = when token k reached the host "
                            "(folo_edu: step() returned it; transformers: streamer.put)",
            "medians": f"over {repeats} repeats of each prompt; both engines alternate order",
            "cpu_time": "the *_cpu numbers use time.process_time instead of the wall clock: "
                        "steadier when other processes share the cores (CPU only)",
            "mfu": MFU_NOTE + "; here at batch size 1 decode",
        },
        "matmul_peak": peak_entry,
        "runs": runs, "per_prompt": per_prompt, "overall": overall,
        "goals": [_goal("M1: folo_edu single-request decode tok/s >= transformers",
                        overall["decode_ratio_folo_over_hf"], 1.0)],
        "load_average_at_end": load_average(),
        "bench_wall_s": time.perf_counter() - t_start,
    })
    _print_single(result)
    return result


def _print_single(res: dict) -> None:
    rows = []
    for p in res["per_prompt"]:
        f, h = p["folo_edu"], p["transformers"]
        rows.append([p["prompt_len"], p["new_tokens"], f["ttft_s"] * 1e3, h["ttft_s"] * 1e3,
                     p["ttft_ratio_folo_over_hf"], f["decode_tok_s"], h["decode_tok_s"],
                     p["decode_ratio_folo_over_hf"]])
    o = res["overall"]
    rows.append(["all", "", o["folo_edu"]["ttft_s"]["median"] * 1e3,
                 o["transformers"]["ttft_s"]["median"] * 1e3, o["ttft_ratio_folo_over_hf"],
                 o["folo_edu"]["decode_tok_s"]["median"],
                 o["transformers"]["decode_tok_s"]["median"], o["decode_ratio_folo_over_hf"]])
    print(f"\nM1 single request, {res['model']['name']}, {res['machine']['device']} "
          f"({res['machine']['cpu_model']}, {res['machine']['torch_threads']} threads), "
          f"medians of {res['config']['repeats'] or 3} repeats")
    print(table(["prompt", "new", "folo TTFT ms", "HF TTFT ms", "TTFT f/h",
                 "folo dec tok/s", "HF dec tok/s", "dec f/h"], rows))
    print(f"by CPU time (steadier on a shared machine): decode folo_edu "
          f"{o['folo_edu']['decode_tok_s_cpu']['median']:.1f} vs transformers "
          f"{o['transformers']['decode_tok_s_cpu']['median']:.1f} tok/s, ratio "
          f"{o['decode_ratio_folo_over_hf_cpu_time']:.2f}; TTFT ratio "
          f"{o['ttft_ratio_folo_over_hf_cpu_time']:.2f}")
    print(f"decode MFU: folo_edu {o['folo_edu']['decode_mfu']:.2%}, transformers "
          f"{o['transformers']['decode_mfu']:.2%} of {res['matmul_peak']['gflops_used']} "
          "GFLOP/s (torch.mm peak)")
    _print_goals(res)


# ---- M2: offline batch -----------------------------------------------------------------
def _evenly(n_total: int, k: int | None) -> list[int]:
    """k indices spread evenly over range(n_total) (all of them when k is None or >= n)."""
    if k is None or k >= n_total:
        return list(range(n_total))
    return sorted({round(i * (n_total - 1) / max(k - 1, 1)) for i in range(k)})


def _rates(useful: int, wall: float, cpu_s: float, total_out: int) -> dict:
    """Tokens/s of a timed sample, and the wall time all ``total_out`` tokens would take."""
    return {"wall_s_timed": wall, "cpu_s_timed": cpu_s, "output_tok_s_cpu": useful / cpu_s,
            "output_tok_s": useful / wall, "wall_s_all": total_out / (useful / wall)}


def _folo_batch(folo, reqs) -> dict:
    run = folo.run_batch(reqs)
    for r, toks in zip(reqs, run["token_ids"]):
        if len(toks) != r.max_tokens:
            raise RuntimeError(f"folo_edu produced {len(toks)} tokens; expected {r.max_tokens}")
    run["output_tok_s"] = run["output_tokens"] / run["wall_s"]
    run["output_tok_s_cpu"] = run["output_tokens"] / run["cpu_s"]
    return run


def _hf_static(hf, batches, idx, total_out) -> tuple[dict, list]:
    """The static batches ``idx`` of ``batches``: their record, and their token ids."""
    runs = [hf.run_static_batch(batches[i]) for i in idx]
    tokens = {k: sum(s[k] for s in runs) for k in (
        "useful_output_tokens", "computed_output_tokens", "useful_prompt_tokens",
        "computed_prompt_tokens")}
    rec = {"batches_run": idx, **_rates(tokens["useful_output_tokens"],
                                        sum(s["wall_s"] for s in runs),
                                        sum(s["cpu_s"] for s in runs), total_out),
           **tokens, "batches": [_strip(s) for s in runs]}
    return rec, [t for s in runs for t in s["token_ids"]]


def _hf_single(hf, reqs, idx, total_out) -> tuple[dict, list]:
    """Requests ``idx`` one at a time: their record, and their token ids."""
    runs = [hf.run_one(reqs[i]) for i in idx]
    useful = sum(o["num_tokens"] for o in runs)
    rec = {"requests_run": idx, **_rates(useful, sum(o["total_s"] for o in runs),
                                         sum(o["total_cpu_s"] for o in runs), total_out),
           "output_tokens": useful,
           "requests": [{"index": i, "prompt_len": reqs[i].prompt_len, **_strip(o)}
                        for i, o in zip(idx, runs)]}
    return rec, [o["token_ids"] for o in runs]


def _side(runs, wall_key: str, measured: bool, forward_tokens, walls, n_params, peak,
          **extra) -> dict:
    """One engine's entry of the results: medians over the repeats, MFU and HFU.

    HFU (hardware FLOP utilization) counts every token run forward (prompts and padding
    included; the last sampled token of a request is never fed back) per second.
    """
    tps = median(r["output_tok_s"] for r in runs)
    return {"output_tok_s": tps, "wall_s": median(r[wall_key] for r in runs),
            "wall_s_measured": measured, "mfu": mfu(n_params, tps, peak), **extra,
            "runs": runs, "output_tok_s_cpu": median(r["output_tok_s_cpu"] for r in runs),
            "forward_tokens_timed": forward_tokens[-1],
            "hfu": median(mfu(n_params, f / w, peak) for f, w in zip(forward_tokens, walls))}


def run_offline(cfg: BenchConfig) -> dict:
    t_start = time.perf_counter()
    device, path, folo, hf, vocab, specials = _engines(cfg)
    dtype = folo.llm.llm_engine.model_runner.dtype
    repeats = cfg.repeats or 1
    reqs = offline_workload(vocab, specials, cfg.num_requests, (cfg.min_len, cfg.max_len),
                            (cfg.min_len, cfg.max_len), cfg.seed)
    result = _header("m2_offline", cfg, device, path, folo, hf, reqs)
    total_out = sum(r.max_tokens for r in reqs)
    peak_before = _peak(cfg, device, dtype)

    B = cfg.hf_batch_size
    batches = [reqs[i:i + B] for i in range(0, len(reqs), B)]
    static_idx = _evenly(len(batches), cfg.hf_static_sample)
    # One-at-a-time sample: evenly spread over the requests sorted by output length.
    by_len = sorted(range(len(reqs)), key=lambda i: (reqs[i].max_tokens, i))
    single_idx = sorted(by_len[j] for j in _evenly(len(reqs), cfg.hf_single_sample))

    warm = [BenchRequest(r.prompt_token_ids, 4) for r in batches[0]]
    folo.run_batch(warm)
    hf.run_static_batch(warm)
    hf.run_one(warm[0])

    folo_runs, static_runs, single_runs = [], [], []
    for rep in range(repeats):
        print(f"  repeat {rep}: folo_edu, {len(reqs)} requests at once ...", flush=True)
        run = _folo_batch(folo, reqs)
        folo_tokens = run["token_ids"]
        print(f"    {run['output_tok_s']:.1f} tok/s, {run['wall_s']:.1f} s", flush=True)
        folo_runs.append(_strip(run))
        print(f"  repeat {rep}: transformers static batches of {B} "
              f"({len(static_idx)} of {len(batches)}) ...", flush=True)
        srec, static_tokens = _hf_static(hf, batches, static_idx, total_out)
        print(f"    {srec['output_tok_s']:.1f} tok/s", flush=True)
        static_runs.append(srec)
        print(f"  repeat {rep}: transformers one request at a time "
              f"({len(single_idx)} of {len(reqs)}) ...", flush=True)
        orec, single_tokens = _hf_single(hf, reqs, single_idx, total_out)
        print(f"    {orec['output_tok_s']:.1f} tok/s", flush=True)
        single_runs.append(orec)
    peak, peak_entry = _peak_used(peak_before, _peak(cfg, device, dtype))

    n_params = hf.num_parameters
    s0 = static_runs[-1]
    fwd_folo = sum(r.prompt_len + r.max_tokens - 1 for r in reqs)
    sides = {
        "folo_edu_continuous": _side(
            folo_runs, "wall_s", True, [fwd_folo] * len(folo_runs),
            [r["wall_s"] for r in folo_runs], n_params, peak,
            ttft_s=summary(t for r in folo_runs for t in r["ttft_s"]),
            latency_s=summary(t for r in folo_runs for t in r["latency_s"]),
            num_preemptions=sum(r["num_preemptions"] for r in folo_runs)),
        "hf_static_batches": _side(
            static_runs, "wall_s_all", len(static_idx) == len(batches),
            [sum(b["computed_prompt_tokens"] + b["computed_output_tokens"] - b["batch_size"]
                 for b in r["batches"]) for r in static_runs],
            [r["wall_s_timed"] for r in static_runs], n_params, peak, batch_size=B,
            padding_waste={
                "output_tokens": 1 - s0["useful_output_tokens"] / s0["computed_output_tokens"],
                "prompt_tokens": 1 - s0["useful_prompt_tokens"] / s0["computed_prompt_tokens"]}),
        "hf_one_at_a_time": _side(
            single_runs, "wall_s_all", len(single_idx) == len(reqs),
            [sum(x["prompt_len"] + x["num_tokens"] - 1 for x in r["requests"])
             for r in single_runs],
            [r["wall_s_timed"] for r in single_runs], n_params, peak),
    }
    (f_tps, f_cpu), (s_tps, s_cpu), (o_tps, o_cpu) = (
        (v["output_tok_s"], v["output_tok_s_cpu"]) for v in sides.values())
    ratios = {"folo_over_hf_static": ratio(f_tps, s_tps),
              "folo_over_hf_one_at_a_time": ratio(f_tps, o_tps),
              "hf_static_over_hf_one_at_a_time": ratio(s_tps, o_tps),
              "folo_over_hf_static_cpu_time": ratio(f_cpu, s_cpu),
              "folo_over_hf_one_at_a_time_cpu_time": ratio(f_cpu, o_cpu)}
    idx_of = {id(r): k for k, r in enumerate(reqs)}
    static_reqs = [r for i in static_idx for r in batches[i]]
    result.update({
        "method": {
            "output_tok_s": "useful output tokens (each request's max_tokens) / wall time",
            "folo_edu": f"LLM.generate on all {len(reqs)} requests at once, "
                        f"max_num_seqs={cfg.max_num_seqs}",
            "hf_static_batches": f"generate on consecutive batches of {B}, left-padded, each "
                                 "run until its longest output (min_new_tokens=max_new_tokens)",
            "hf_one_at_a_time": "generate on one request at a time",
            "extrapolation": ("wall_s of a side whose wall_s_measured is false = all useful "
                              "output tokens / the tokens/s of the timed sample "
                              f"(static batches run: {static_idx}; one-at-a-time requests "
                              f"run: {single_idx}, spread evenly over output lengths)"),
            "mfu": MFU_NOTE,
            "hfu": "hardware FLOP utilization = 2 x num_parameters x (every token run "
                   "through the model: prompts, padding, outputs but the last) / wall / "
                   "peak; equal hfu with different mfu means the same arithmetic speed "
                   "spent on more or fewer useful tokens",
            "cpu_time": "output_tok_s_cpu = tokens / process CPU seconds: steadier when other "
                        "processes share the cores (CPU only)",
        },
        "matmul_peak": peak_entry, "results": sides, "ratios": ratios,
        "agreement": {
            "folo_vs_hf_static": agreement([folo_tokens[idx_of[id(r)]] for r in static_reqs],
                                           static_tokens),
            "folo_vs_hf_one_at_a_time": agreement([folo_tokens[i] for i in single_idx],
                                                  single_tokens)},
        "goals": [
            _goal("M2: folo_edu offline tok/s >= 3x transformers static batching",
                  ratios["folo_over_hf_static"], 3.0),
            _goal("M2: folo_edu offline tok/s >= 10x transformers one at a time",
                  ratios["folo_over_hf_one_at_a_time"], 10.0)],
        "load_average_at_end": load_average(),
        "bench_wall_s": time.perf_counter() - t_start,
    })
    _print_offline(result)
    return result


def _print_offline(res: dict) -> None:
    r, w = res["results"], res["workload"]
    names = [("folo_edu continuous batching", "folo_edu_continuous"),
             (f"HF static batches of {r['hf_static_batches']['batch_size']}", "hf_static_batches"),
             ("HF one at a time", "hf_one_at_a_time")]
    f_tps = r["folo_edu_continuous"]["output_tok_s"]
    f_cpu = r["folo_edu_continuous"]["output_tok_s_cpu"]
    rows = [[label, r[k]["output_tok_s"], f_tps / r[k]["output_tok_s"], r[k]["wall_s"],
             "measured" if r[k]["wall_s_measured"] else "extrapolated", f"{r[k]['mfu']:.2%}",
             f"{r[k]['hfu']:.2%}", r[k]["output_tok_s_cpu"], f_cpu / r[k]["output_tok_s_cpu"]]
            for label, k in names]
    print(f"\nM2 offline: {w['num_requests']} requests, {w['total_prompt_tokens']} prompt + "
          f"{w['total_output_tokens']} output tokens, {res['model']['name']}, "
          f"{res['machine']['device']} ({res['machine']['cpu_model']}, "
          f"{res['machine']['torch_threads']} threads)")
    print(table(["engine", "out tok/s", "folo speedup", "wall s", "wall", "MFU", "HFU",
                 "tok/CPU-s", "speedup (CPU time)"], rows))
    pw = r["hf_static_batches"]["padding_waste"]
    print(f"HF static padding waste: {pw['output_tokens']:.1%} of output slots, "
          f"{pw['prompt_tokens']:.1%} of prompt slots; matmul peak "
          f"{res['matmul_peak']['gflops_used']} GFLOP/s; folo_edu preemptions "
          f"{r['folo_edu_continuous']['num_preemptions']}")
    _print_goals(res)


def run(cfg: BenchConfig) -> dict:
    """Run the configured suite, print its table, save its JSON; return the result."""
    if cfg.workload not in ("single", "offline"):
        raise ValueError(f"workload={cfg.workload!r}: expected 'single' or 'offline'")
    res = run_single(cfg) if cfg.workload == "single" else run_offline(cfg)
    if cfg.output != "-":
        out = save_json(cfg.output or cfg.default_output(resolve_bench_device(cfg.device)), res)
        print(f"saved {out}")
    return res
