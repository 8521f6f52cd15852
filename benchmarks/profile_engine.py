"""Where folo_edu spends its time: a stage breakdown and a torch.profiler op table.

    .venv/bin/python benchmarks/profile_engine.py --workload single
    .venv/bin/python benchmarks/profile_engine.py --workload offline --decode-steps 30

Stage timers wrap the engine's own methods from the outside (nothing in the engine
is edited): schedule, metadata build, model forward, logits, sampler, scheduler
update, output processing. The op table comes from torch.profiler over the same
kind of steps. --hf also profiles transformers generate on the single workload.
Writes benchmarks/results/profile_<workload>_<device>.json unless --output -.
"""
from __future__ import annotations

import argparse
import collections
import functools
import time

import torch

from folo_edu.bench.machine import (load_average, machine_info, resolve_bench_device,
                                    source_version, synchronize)
from folo_edu.bench.metrics import save_json, timestamp
from folo_edu.bench.runners import FoloRunner, HFRunner
from folo_edu.bench.workloads import (BenchRequest, offline_workload, single_workload,
                                      special_token_ids)


class StageTimer:
    def __init__(self, device):
        self.device = device
        self.total = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.enabled = False

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            if not self.enabled:
                return fn(*a, **k)
            synchronize(self.device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            synchronize(self.device)
            self.total[name] += time.perf_counter() - t0
            self.calls[name] += 1
            return out
        return timed


def instrument(engine, timer: StageTimer) -> None:
    """Wrap the engine's stages (instance attributes only; the classes are untouched,
    except AttentionMetadata.build, a classmethod, patched for this process)."""
    import folo_edu.engine.model_runner as mr

    sched, runner, op = engine.scheduler, engine.model_runner, engine.output_processor
    sched.schedule = timer.wrap("scheduler.schedule", sched.schedule)
    sched.update_from_output = timer.wrap("scheduler.update_from_output",
                                          sched.update_from_output)
    runner.execute = timer.wrap("runner.execute (total)", runner.execute)
    runner.model.forward = timer.wrap("  model.forward (30 layers)", runner.model.forward)
    runner.model.compute_logits = timer.wrap("  model.compute_logits", runner.model.compute_logits)
    sampler = runner.sampler
    runner.sampler = timer.wrap("  sampler", sampler.__call__)
    build = mr.AttentionMetadata.build
    mr.AttentionMetadata.build = timer.wrap("  AttentionMetadata.build", build)
    backend = runner.backend
    backend.forward = timer.wrap("    attention backend (in forward)", backend.forward)
    op.process_token = timer.wrap("output_processor.process_token", op.process_token)
    op.make_output = timer.wrap("output_processor.make_output", op.make_output)


def op_table(prof, n=20) -> list[dict]:
    rows = []
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]:
        rows.append({"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "share": e.self_cpu_time_total / total})
    return rows


def print_ops(title, rows):
    print(f"\n{title}")
    for r in rows:
        print(f"  {r['op'][:58]:58s} {r['calls']:7d} calls {r['self_cpu_ms']:10.1f} ms "
              f"{r['share']:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("single", "offline"), default="single")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=64, help="single: tokens generated")
    ap.add_argument("--decode-steps", type=int, default=30,
                    help="offline: decode steps profiled after all 64 prompts are prefilled")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--hf", action="store_true", help="also profile transformers (single)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    from folo_edu.models.loader import resolve_model_path

    device = resolve_bench_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(resolve_model_path(args.model))
    folo = FoloRunner(path, device, "float32", 1024, args.max_num_seqs)
    engine = folo.llm.llm_engine
    cfg = engine.config.model_config.hf_config
    exclude = special_token_ids(folo.llm.get_tokenizer(), cfg)
    timer = StageTimer(device)
    instrument(engine, timer)
    result = {"benchmark": f"profile_{args.workload}", "timestamp": timestamp(),
              "source": source_version(),
              "machine": machine_info(device), "load_average_at_start": load_average(),
              "config": vars(args)}

    if args.workload == "single":
        req = single_workload(cfg.vocab_size, exclude, new_tokens=args.new_tokens)[2]
        folo.run_one(BenchRequest(req.prompt_token_ids, 8))  # warm-up
        timer.enabled = True
        t0 = time.perf_counter()
        run = folo.run_one(req)
        wall = time.perf_counter() - t0
        timer.enabled = False
        result["folo_run"] = {k: v for k, v in run.items() if k != "token_ids"}
        steps = args.new_tokens
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            folo.run_one(req)
        result["folo_ops"] = op_table(prof)
        if args.hf:
            hf = HFRunner(path, device, torch.float32)
            hf.run_one(BenchRequest(req.prompt_token_ids, 8))
            hrun = hf.run_one(req)
            result["hf_run"] = {k: v for k, v in hrun.items() if k != "token_ids"}
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p2:
                hf.run_one(req)
            result["hf_ops"] = op_table(p2)
    else:
        reqs = offline_workload(cfg.vocab_size, exclude)
        params = [folo._params(r.max_tokens) for r in reqs]
        # Prefill everything first (unprofiled), then time decode-only steps.
        for i, (r, p) in enumerate(zip(reqs, params)):
            engine.add_request(f"p{i}", {"prompt_token_ids": r.prompt_token_ids}, p)
        step_log = []
        timer.enabled = True
        t0 = time.perf_counter()
        while engine.scheduler.waiting or any(
                rq.num_computed_tokens < rq.num_prompt_tokens for rq in engine.scheduler.running):
            ts = time.perf_counter()
            engine.step()
            step_log.append({"kind": "prefill", "tokens": engine.get_stats()[
                "num_batched_tokens_last_step"], "s": time.perf_counter() - ts})
        prefill_s = time.perf_counter() - t0
        prefill_stages = dict(timer.total)
        timer.total.clear()
        timer.calls.clear()
        t0 = time.perf_counter()
        for _ in range(args.decode_steps):
            ts = time.perf_counter()
            engine.step()
            step_log.append({"kind": "decode", "tokens": engine.get_stats()[
                "num_batched_tokens_last_step"], "s": time.perf_counter() - ts})
        wall = time.perf_counter() - t0
        timer.enabled = False
        steps = args.decode_steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(min(10, args.decode_steps)):
                engine.step()
        result["folo_ops"] = op_table(prof)
        result["prefill"] = {"wall_s": prefill_s, "stages_s": prefill_stages}
        result["steps"] = step_log
        engine.abort_request([r for r in list(engine._groups)])
        print(f"prefill of {len(reqs)} prompts: {prefill_s:.2f} s in "
              f"{sum(s['kind'] == 'prefill' for s in step_log)} steps")
        for k, v in sorted(prefill_stages.items(), key=lambda kv: -kv[1]):
            print(f"  {k:40s} {v:8.3f} s {v / prefill_s:6.1%}")

    result["stages"] = {"wall_s": wall, "steps": steps,
                        "per_stage": {k: {"s": v, "calls": timer.calls[k], "share": v / wall}
                                      for k, v in timer.total.items()}}
    print(f"\nfolo_edu {args.workload}: {steps} decode steps in {wall:.2f} s "
          f"({wall / steps * 1e3:.1f} ms/step)")
    for k, v in sorted(timer.total.items(), key=lambda kv: -kv[1]):
        print(f"  {k:40s} {v:8.3f} s {v / wall:6.1%} ({timer.calls[k]} calls)")
    print_ops("folo_edu torch.profiler, top ops by self CPU time", result["folo_ops"])
    if "hf_ops" in result:
        print(f"\ntransformers single: decode {result['hf_run']['decode_tok_s']:.1f} tok/s vs "
              f"folo_edu {result['folo_run']['decode_tok_s']:.1f} tok/s")
        print_ops("transformers torch.profiler, top ops by self CPU time", result["hf_ops"])
    result["load_average_at_end"] = load_average()
    if args.output != "-":
        out = args.output or f"benchmarks/results/profile_{args.workload}_{device.type}.json"
        print(f"saved {save_json(out, result)}")


if __name__ == "__main__":
    main()
