"""The M5 latency workload behind ``folo-edu bench --workload latency``.

A few requests are decoding when a long prompt arrives. Without chunked prefill the
whole prompt runs in one step, and every running decode waits for it: one long gap
between two of their tokens (an inter-token latency, ITL, spike). With chunked prefill
the prompt runs in pieces of at most the token budget, beside the decodes, so their
gaps stay short, and the long prompt's own time to first token (TTFT) grows a little.

    latency_workload      the running requests and the long prompt (random token ids)
    set_scheduler         give an idle engine another scheduler config (same weights)
    run_arrival           one measured run, step by step: every step's time and
                          tokens, every ITL of the running requests, the long TTFT
    summarize_run         the numbers of one run (p50/p99/max ITL, TTFT, ...)
    run_latency           every setting x threads x repeats, medians, JSON

The same functions drive notebook 07 on a small random model.
"""
from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from folo_edu.bench.machine import (load_average, machine_info, resolve_bench_device,
                                    source_version, synchronize)
from folo_edu.bench.metrics import median, percentile, save_json, table, timestamp
from folo_edu.bench.workloads import BenchRequest, _random_ids, special_token_ids_of

GOAL_RATIO = 1.5  # issue 10: with chunking, p99 ITL <= 1.5 x p50 while a long prompt arrives


@dataclass
class LatencyConfig:
    model: str | None = None            # None: the default model
    device: str = "auto"
    dtype: str = "float32"
    threads: tuple[int, ...] = (1, 2)   # torch threads; the first runs every setting
    # the settings also run at the other thread counts (None: all; "" entries ignored)
    other_threads_settings: tuple[str, ...] | None = ("unchunked", "chunked-64",
                                                      "chunked-512")
    repeats: int = 3                    # runs of each (threads, setting); medians reported
    seed: int = 0
    output: str | None = None           # JSON path; "-" saves nothing
    num_running: int = 8                # requests already decoding when the long one comes
    running_prompt_len: int = 32
    running_output_len: int = 32
    long_prompt_len: int = 1500
    long_output_len: int = 4
    arrival_step: int = 4               # the long prompt is added before this step
    budgets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # chunked max_num_batched_tokens
    max_model_len: int = 2048           # also the unchunked budget (vLLM's minimum)
    attention_backend: str = "auto"

    def default_output(self, device: torch.device) -> str:
        return str(Path("benchmarks") / "results" / f"m5_latency_{device.type}.json")


@dataclass(frozen=True)
class Setting:
    """One scheduler configuration of the comparison."""

    name: str
    enable_chunked_prefill: bool
    max_num_batched_tokens: int
    long_prefill_token_threshold: int = 0


def settings(cfg: LatencyConfig) -> list[Setting]:
    """Unchunked with budget max_model_len, then chunked at every budget of the sweep."""
    return ([Setting("unchunked", False, cfg.max_model_len)]
            + [Setting(f"chunked-{b}", True, b) for b in cfg.budgets])


def latency_workload(vocab_size: int, exclude: set[int], num_running: int = 8,
                     running_prompt_len: int = 32, running_output_len: int = 32,
                     long_prompt_len: int = 1500, long_output_len: int = 4,
                     seed: int = 0) -> tuple[list[BenchRequest], BenchRequest]:
    """``num_running`` short requests and one long prompt, random ids with a fixed seed."""
    import random

    rng = random.Random(seed)
    running = [BenchRequest(_random_ids(rng, running_prompt_len, vocab_size, exclude),
                            running_output_len) for _ in range(num_running)]
    long = BenchRequest(_random_ids(rng, long_prompt_len, vocab_size, exclude), long_output_len)
    return running, long


def set_scheduler(engine, setting: Setting) -> None:
    """Give an idle engine a fresh scheduler with ``setting`` (the weights stay loaded).

    The new config goes through EngineConfig's checks, so a setting the engine would
    refuse at construction (unchunked with a budget < max_model_len) is refused here too.
    """
    from folo_edu.engine.scheduler import Scheduler

    if engine.has_unfinished_requests():
        raise RuntimeError("set_scheduler: the engine still has unfinished requests")
    sc = dataclasses.replace(engine.config.scheduler_config,
                             enable_chunked_prefill=setting.enable_chunked_prefill,
                             max_num_batched_tokens=setting.max_num_batched_tokens,
                             long_prefill_token_threshold=setting.long_prefill_token_threshold)
    engine.config = dataclasses.replace(engine.config, scheduler_config=sc)  # checks it
    engine.scheduler = Scheduler(sc, engine.kv_manager, engine.max_model_len,
                                 token_rule=engine.scheduler.token_rule)


def _greedy(n: int):
    from folo_edu.sampling_params import SamplingParams

    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def run_arrival(engine, running: list[BenchRequest], long: BenchRequest | None,
                arrival_step: int, device="cpu", max_steps: int = 100_000) -> dict:
    """Add ``running`` before step 0 and ``long`` before ``arrival_step``; step the engine
    until all finish, timing every step.

    Returns plain data: per step its seconds, tokens, the long prompt's chunk (0 if none)
    and whether it held any prefill; per running request its ITLs (seconds) and, for
    each ITL, the step that produced the later token (``itl_steps``) and when that token
    came, in seconds after the long prompt was added (``itl_at``; after the start when
    there is no long prompt); the long prompt's TTFT, the step range of its prefill and
    its chunk sizes; every request's token ids.
    """
    ids = [f"run{i}" for i in range(len(running))]
    for rid, r in zip(ids, running):
        engine.add_request(rid, {"prompt_token_ids": r.prompt_token_ids}, _greedy(r.max_tokens))
    step_end, step_s, step_tokens, long_chunk, any_prefill = [], [], [], [], []
    final = {}
    step = 0
    t_arrival = time.monotonic()  # replaced by the long prompt's arrival, if any
    while engine.has_unfinished_requests() or (long is not None and step <= arrival_step):
        if long is not None and step == arrival_step:
            engine.add_request("long", {"prompt_token_ids": long.prompt_token_ids},
                               _greedy(long.max_tokens))
            t_arrival = time.monotonic()
        synchronize(device)
        t0 = time.perf_counter()
        outs = engine.step()
        synchronize(device)
        step_s.append(time.perf_counter() - t0)
        step_end.append(time.monotonic())
        step_tokens.append(sum(n for _, n, _ in engine.last_step))
        long_chunk.append(sum(n for r, n, k in engine.last_step if r == "long" and k == "prefill"))
        any_prefill.append(any(k == "prefill" for _, _, k in engine.last_step))
        for out in outs:
            if out.finished:
                final[out.request_id] = out
        step += 1
        if step > max_steps:
            raise RuntimeError(f"run_arrival: unfinished after max_steps={max_steps}")

    def step_of(t: float) -> int:  # the step in whose update the token got its time
        return bisect.bisect_left(step_end, t)

    itls, itl_steps, itl_at = [], [], []
    for rid in ids:
        times = final[rid].metrics.token_times
        itls.append([b - a for a, b in zip(times, times[1:])])
        itl_steps.append([step_of(t) for t in times[1:]])
        itl_at.append([t - t_arrival for t in times[1:]])
    chunks = [(s, n) for s, n in enumerate(long_chunk) if n]
    result = {
        "step_s": step_s, "step_tokens": step_tokens, "long_chunk": long_chunk,
        "step_has_prefill": any_prefill, "itls": itls, "itl_steps": itl_steps,
        "itl_at": itl_at,
        "token_ids": {rid: list(o.outputs[0].token_ids) for rid, o in final.items()},
        "arrival_step": arrival_step, "num_steps": len(step_s),
    }
    if long is not None:
        m = final["long"].metrics
        result.update({"long_ttft_s": m.ttft, "long_queue_s": m.queue_time,
                       "long_chunks": [n for _, n in chunks],
                       "long_prefill_steps": [chunks[0][0], chunks[-1][0]]})
    return result


def summarize_run(run: dict) -> dict:
    """The numbers of one ``run_arrival``: ITLs of the running requests (all of them;
    those whose token came in a step with a chunk of the long prompt; the others), the
    long prompt's TTFT, and the whole run's wall time."""
    flat = [x for row in run["itls"] for x in row]
    chunk_steps = {s for s, n in enumerate(run["long_chunk"]) if n}
    during = [x for row, steps in zip(run["itls"], run["itl_steps"])
              for x, s in zip(row, steps) if s in chunk_steps]
    other = [x for row, steps in zip(run["itls"], run["itl_steps"])
             for x, s in zip(row, steps) if s not in chunk_steps]
    p50, p99 = percentile(flat, 50), percentile(flat, 99)
    out = {"itl_p50_s": p50, "itl_p90_s": percentile(flat, 90), "itl_p99_s": p99,
           "itl_max_s": max(flat) if flat else None,
           "itl_p99_over_p50": p99 / p50 if p50 else None,
           "itl_max_over_p50": max(flat) / p50 if p50 else None,
           "itl_median_during_long_prefill_s": percentile(during, 50),
           "itl_median_otherwise_s": percentile(other, 50),
           "num_itls": len(flat), "num_itls_during_long_prefill": len(during),
           "wall_s": sum(run["step_s"]), "num_steps": run["num_steps"]}
    if "long_ttft_s" in run:
        out.update({"long_ttft_s": run["long_ttft_s"],
                    "long_prefill_steps": len(run["long_chunks"]),
                    "long_chunk_max": max(run["long_chunks"])})
    return out


# ---- the benchmark ---------------------------------------------------------------------
def _engine(cfg: LatencyConfig, device):
    from folo_edu import LLM
    from folo_edu.models.loader import resolve_model_path

    path = str(resolve_model_path(cfg.model))
    llm = LLM(path, dtype=cfg.dtype, device=device.type, max_model_len=cfg.max_model_len,
              max_num_seqs=max(cfg.num_running + 1, 1), enable_prefix_caching=False,
              attention_backend=cfg.attention_backend, skip_tokenizer_init=True)
    return path, llm


def _stripped(run: dict) -> dict:
    """A run for the JSON: per-step data kept, token ids and per-ITL steps dropped."""
    keep = ("step_s", "step_tokens", "long_chunk", "long_ttft_s", "long_queue_s")
    return {k: run[k] for k in keep if k in run}


def run_latency(cfg: LatencyConfig) -> dict:
    """Every (threads, setting) ``cfg.repeats`` times, interleaved so that a burst of
    load from other processes hits every setting; medians; goals; JSON."""
    t_start = time.perf_counter()
    device = resolve_bench_device(cfg.device)
    threads0 = torch.get_num_threads()
    path, llm = _engine(cfg, device)
    engine = llm.llm_engine
    hf_config = engine.config.model_config.hf_config
    running, long = latency_workload(hf_config.vocab_size,
                                     special_token_ids_of(path, hf_config),
                                     cfg.num_running, cfg.running_prompt_len,
                                     cfg.running_output_len, cfg.long_prompt_len,
                                     cfg.long_output_len, cfg.seed)
    sets = settings(cfg)
    result = {
        "benchmark": "m5_latency", "timestamp": timestamp(), "source": source_version(),
        "machine": machine_info(device), "load_average_at_start": load_average(),
        "config": asdict(cfg),
        "model": {"name": Path(path).name,
                  "num_parameters": sum(p.numel() for p in
                                        engine.model_runner.model.parameters())},
        "folo_edu_settings": {"dtype": str(engine.model_runner.dtype).replace("torch.", ""),
                              "attention_backend": engine.model_runner.backend.name,
                              "block_size": engine.config.tokens_per_block,
                              "num_kv_blocks": engine.kv_manager.num_blocks,
                              "max_num_seqs": engine.config.scheduler_config.max_num_seqs},
        "settings": [asdict(s) for s in sets],
    }
    runs: list[dict] = []
    reference_tokens = None
    warm_running = [BenchRequest(r.prompt_token_ids[:8], 3) for r in running[:2]]
    warm_long = BenchRequest(long.prompt_token_ids[:200], 2)
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        set_scheduler(engine, Setting("warm-up", True, 64))
        run_arrival(engine, warm_running, warm_long, 1, device)  # warm-up, not timed
        mine = sets if threads == cfg.threads[0] or cfg.other_threads_settings is None else [
            s for s in sets if s.name in cfg.other_threads_settings]
        for rep in range(cfg.repeats):
            order = mine[rep % len(mine):] + mine[:rep % len(mine)]  # rotate the order
            for s in order:
                set_scheduler(engine, s)
                load_before = load_average()
                run = run_arrival(engine, running, long, cfg.arrival_step, device)
                summ = summarize_run(run)
                tokens = run["token_ids"]
                if reference_tokens is None:
                    reference_tokens = tokens
                same = sum(tokens[r] == reference_tokens[r] for r in tokens)
                runs.append({"threads": threads, "repeat": rep, "setting": s.name,
                             "load_average_before": load_before,
                             "load_average_after": load_average(), **summ,
                             "identical_token_ids_vs_first_run": f"{same}/{len(tokens)}",
                             "steps": _stripped(run)})
                print(f"  threads {threads} repeat {rep} {s.name:>13}: ITL p50 "
                      f"{summ['itl_p50_s'] * 1e3:6.0f} ms p99 {summ['itl_p99_s'] * 1e3:6.0f} "
                      f"ms max {summ['itl_max_s'] * 1e3:6.0f} ms, long TTFT "
                      f"{summ['long_ttft_s']:.2f} s, load {load_before}", flush=True)
    torch.set_num_threads(threads0)
    result["runs"] = runs
    result["medians"] = _medians(runs, cfg, sets)
    result["goals"] = _goals(result["medians"], cfg)
    result["method"] = METHOD
    result["load_average_at_end"] = load_average()
    result["bench_wall_s"] = time.perf_counter() - t_start
    print_latency(result)
    return result


METHOD = {
    "workload": "num_running requests (random prompt ids, greedy, EOS ignored) are added "
                "before step 0; the long prompt is added before step arrival_step, while "
                "they decode. The engine is stepped one step at a time until all finish.",
    "itl": "inter-token latency of the running requests: gaps between consecutive "
           "RequestOutput.metrics.token_times (when each token reached the host), over all "
           "running requests and their whole run; p50/p99 by linear interpolation",
    "itl_during_long_prefill": "ITLs whose later token came in a step that ran a chunk "
                               "of the long prompt",
    "long_ttft": "RequestOutput.metrics.ttft of the long prompt: add_request to the step "
                 "that returned its first token",
    "settings": "unchunked: enable_chunked_prefill=False, max_num_batched_tokens="
                "max_model_len; chunked-B: enable_chunked_prefill=True, "
                "max_num_batched_tokens=B. One engine, its scheduler replaced between runs "
                "(bench.latency.set_scheduler), so the weights are loaded once",
    "medians": "over the repeats of each (threads, setting); the settings run interleaved, "
               "their order rotated each repeat, after one untimed warm-up run per "
               "thread count; every setting at the first thread count, "
               "other_threads_settings at the others (to keep the benchmark near 10 min)",
    "goal": "with chunking, the running decodes' p99 ITL <= 1.5 x their p50",
    "prefix_caching": "off: every run sends the same prompts, which would otherwise be "
                      "found in the cache from the run before",
}

_KEYS = ("itl_p50_s", "itl_p90_s", "itl_p99_s", "itl_max_s", "itl_p99_over_p50",
         "itl_max_over_p50", "itl_median_during_long_prefill_s", "itl_median_otherwise_s",
         "long_ttft_s", "long_prefill_steps", "long_chunk_max", "wall_s", "num_steps")


def _medians(runs: list[dict], cfg: LatencyConfig, sets: list[Setting]) -> list[dict]:
    rows = []
    for threads in cfg.threads:
        for s in sets:
            mine = [r for r in runs if r["threads"] == threads and r["setting"] == s.name]
            if not mine:
                continue
            rows.append({"threads": threads, "setting": s.name,
                         "enable_chunked_prefill": s.enable_chunked_prefill,
                         "max_num_batched_tokens": s.max_num_batched_tokens,
                         "repeats": len(mine),
                         **{k: median(r[k] for r in mine) for k in _KEYS}})
    return rows


def _goals(rows: list[dict], cfg: LatencyConfig) -> list[dict]:
    goals = []
    for threads in cfg.threads:
        for r in rows:
            if r["threads"] != threads or not r["enable_chunked_prefill"]:
                continue
            goals.append({"goal": f"M5: chunked (budget {r['max_num_batched_tokens']}, "
                                  f"{threads} thread(s)): p99 ITL <= {GOAL_RATIO} x p50",
                          "ratio": r["itl_p99_over_p50"],
                          "met": r["itl_p99_over_p50"] is not None
                          and r["itl_p99_over_p50"] <= GOAL_RATIO})
    return goals


def print_latency(res: dict) -> None:
    c = res["config"]
    m = res["machine"]
    print(f"\nM5 latency: {c['num_running']} running requests ({c['running_prompt_len']} + "
          f"{c['running_output_len']} tokens), a {c['long_prompt_len']}-token prompt arrives "
          f"before step {c['arrival_step']}; {res['model']['name']}, {m['device']} "
          f"({m['cpu_model']}), medians of {c['repeats']} runs")
    rows = [[r["threads"], r["setting"], r["itl_p50_s"] * 1e3, r["itl_p99_s"] * 1e3,
             r["itl_max_s"] * 1e3, r["itl_p99_over_p50"],
             r["itl_median_during_long_prefill_s"] * 1e3, r["long_ttft_s"],
             r["long_prefill_steps"]] for r in res["medians"]]
    print(table(["threads", "setting", "ITL p50 ms", "ITL p99 ms", "ITL max ms", "p99/p50",
                 "ITL in chunk steps ms", "long TTFT s", "prefill steps"], rows))
    met = [g for g in res["goals"] if g["met"]]
    print(f"goal p99 <= {GOAL_RATIO} x p50 with chunking: met in {len(met)} of "
          f"{len(res['goals'])} chunked settings"
          + (": " + ", ".join(g["goal"].split("(")[1].split(")")[0] for g in met) if met else ""))
    print(f"load average {res['load_average_at_start']} -> {res['load_average_at_end']}, "
          f"{res['bench_wall_s']:.0f} s in all")


def run(cfg: LatencyConfig) -> dict:
    """Run the latency benchmark, print its table, save its JSON; return the result."""
    res = run_latency(cfg)
    if cfg.output != "-":
        out = save_json(cfg.output or cfg.default_output(resolve_bench_device(cfg.device)), res)
        print(f"saved {out}")
    return res
