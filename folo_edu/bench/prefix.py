"""The M6 prefix-caching workload behind ``folo-edu bench --workload prefix``.

Three measurements, on one engine whose KV cache manager is swapped between settings
(``set_prefix_caching``), so the weights load once:

    (a) TTFT     a request whose 1,024-token prefix is already cached (another request
                 with the same prefix ran before it) against the same request with an
                 empty cache (``reset_prefix_cache``), max_tokens=1
    (b) shared   N requests sharing a 512-token system prompt, each with its own short
                 question, all submitted at once: output tokens/s with caching off, on
                 (cache empty at the start), on with the system prompt already cached,
                 and transformers (one static batch: the prompts have equal lengths, so
                 there is no padding)
    (c) hit rate against the shared-prefix length: measured in the engine (requests one
                 after another, so the first request's TTFT is cold and the others' warm),
                 and on the real Scheduler and KVCacheManager with a fake model
                 (``replay_hit_rate``) for two arrival patterns: one after another, and
                 all at once (requests admitted in the same step share the blocks the
                 first one fills: blocks are cached at allocation)

    prefix_workload      the shared-prefix requests (random token ids, fixed seed)
    set_prefix_caching   give an idle engine a fresh KV cache manager, caching on or off
    ttft_once            one request alone: TTFT and num_cached_tokens
    run_batch            a list of requests at once: wall time, tokens, prefix stats
    replay_hit_rate      the hit rate of a workload, without a model
    run_prefix           all of it, medians over repeats, goals, JSON
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from folo_edu.bench.machine import (load_average, machine_info, resolve_bench_device,
                                    source_version, synchronize)
from folo_edu.bench.metrics import agreement, median, save_json, table, timestamp
from folo_edu.bench.workloads import BenchRequest, _random_ids, special_token_ids_of

GOAL_TTFT = 5.0        # issue 11: a cached 1,024-token prefix makes TTFT >= 5x faster
GOAL_THROUGHPUT = 2.0  # issue 11: shared system prompt, caching on >= 2x caching off


@dataclass
class PrefixConfig:
    model: str | None = None            # None: the default model
    device: str = "auto"
    dtype: str = "float32"
    threads: tuple[int, ...] = (1, 2)   # (a) runs at each; (b) and (c) at the first only
    repeats: int = 3                    # of (a) and (b); medians reported
    seed: int = 0
    output: str | None = None           # JSON path; "-" saves nothing
    max_wall_s: float | None = 720.0    # no new repeat of (b) that would end past this
    # (a) TTFT
    ttft_prefix_len: int = 1024
    ttft_suffix_len: int = 16
    # (b) a shared system prompt
    num_requests: int = 64
    system_prompt_len: int = 512
    question_len: int = 16
    output_len: int = 16
    hf: bool = True                     # time transformers on (b) too
    # (c) hit rate against the shared-prefix length
    sweep_prefix_lens: tuple[int, ...] = (0, 16, 64, 256, 1024)
    sweep_num_requests: int = 4         # in the engine, one after another
    sweep_question_len: int = 16
    replay_prefix_lens: tuple[int, ...] = (0, 8, 16, 32, 64, 128, 256, 512, 1024)
    max_model_len: int = 2048
    max_num_seqs: int = 64
    attention_backend: str = "auto"

    def default_output(self, device: torch.device) -> str:
        return str(Path("benchmarks") / "results" / f"m6_prefix_{device.type}.json")


# ---- workloads and the engine seam ------------------------------------------------------
def prefix_workload(vocab_size: int, exclude: set[int], num_requests: int, prefix_len: int,
                    question_len: int, output_len: int, seed: int = 0) -> list[BenchRequest]:
    """``num_requests`` prompts that start with the same ``prefix_len`` random tokens and
    end with ``question_len`` tokens of their own; each generates ``output_len``."""
    rng = random.Random(seed)
    prefix = _random_ids(rng, prefix_len, vocab_size, exclude)
    return [BenchRequest(prefix + _random_ids(rng, question_len, vocab_size, exclude),
                         output_len) for _ in range(num_requests)]


def set_prefix_caching(engine, enabled: bool) -> None:
    """Give an idle engine a fresh KVCacheManager (same blocks, empty cache) with prefix
    caching on or off; the model and its KV tensors stay. The new manager goes where the
    engine's was: ``engine.kv_manager`` and ``engine.scheduler.kv``."""
    from folo_edu.kv_cache.manager import KVCacheManager

    if engine.has_unfinished_requests():
        raise RuntimeError("set_prefix_caching: the engine still has unfinished requests")
    old = engine.kv_manager
    cc = dataclasses.replace(engine.config.cache_config, enable_prefix_caching=enabled)
    engine.config = dataclasses.replace(engine.config, cache_config=cc)  # checks it
    engine.kv_manager = engine.scheduler.kv = KVCacheManager(
        old.num_blocks, old.block_size, enabled)


def _greedy(n: int):
    from folo_edu.sampling_params import SamplingParams

    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


_ids = iter(range(10 ** 9))


def ttft_once(engine, prompt_token_ids: list[int], device="cpu") -> dict:
    """One request alone (max_tokens=1): wall seconds from add_request to the step that
    returned its token, and how many of its tokens came from the cache."""
    rid = f"ttft-{next(_ids)}"
    synchronize(device)
    c0, t0 = time.process_time(), time.perf_counter()
    engine.add_request(rid, {"prompt_token_ids": prompt_token_ids}, _greedy(1))
    out = None
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.request_id == rid and o.finished:
                out = o
    synchronize(device)
    return {"ttft_s": time.perf_counter() - t0, "ttft_cpu_s": time.process_time() - c0,
            "num_cached_tokens": out.num_cached_tokens, "prompt_len": len(prompt_token_ids),
            "token_ids": list(out.outputs[0].token_ids)}


def run_batch(engine, reqs: list[BenchRequest], device="cpu") -> dict:
    """Every request added at once, the engine stepped until all finish."""
    ids = [f"b{next(_ids)}" for _ in reqs]
    synchronize(device)
    c0, t0 = time.process_time(), time.perf_counter()
    for rid, r in zip(ids, reqs):
        engine.add_request(rid, {"prompt_token_ids": r.prompt_token_ids}, _greedy(r.max_tokens))
    final, steps = {}, 0
    while engine.has_unfinished_requests():
        steps += 1
        for o in engine.step():
            if o.finished:
                final[o.request_id] = o
    synchronize(device)
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    stats = engine.get_stats()
    outs = [final[rid] for rid in ids]
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"wall_s": wall, "cpu_s": cpu_s, "output_tokens": n_out,
            "output_tok_s": n_out / wall, "output_tok_per_cpu_s": n_out / cpu_s,
            "num_steps": steps,
            "prompt_tokens": sum(r.prompt_len for r in reqs),
            "cached_tokens": sum(o.num_cached_tokens for o in outs),
            "requests_with_a_hit": sum(o.num_cached_tokens > 0 for o in outs),
            "prefix_cache_hit_rate": stats["prefix_cache_hit_rate"],
            "ttft_median_s": median(o.metrics.ttft for o in outs),
            "token_ids": [list(o.outputs[0].token_ids) for o in outs]}


def replay_hit_rate(prefix_len: int, num_requests: int = 16, question_len: int = 16,
                    output_len: int = 16, block_size: int = 16, arrival: str = "together",
                    max_num_batched_tokens: int = 2048, max_num_seqs: int = 64,
                    num_blocks: int | None = None, seed: int = 0) -> dict:
    """The prefix-cache hit rate of a shared-prefix workload on the real Scheduler and
    KVCacheManager (caching on, chunked prefill) with a fake model: no weights, so it
    takes milliseconds, and it is what the engine would do with the same token ids.

    arrival: "together" (all at step 0) or "one_by_one" (each added after the one before
    has finished). Returns the hit rate (cached / looked-up tokens), the ideal one (every
    request but the first finds the prefix's full blocks), and the requests with a hit.
    """
    from folo_edu.bench.replay import replay
    from folo_edu.config import SchedulerConfig
    from folo_edu.engine.scheduler import Scheduler
    from folo_edu.kv_cache.manager import KVCacheManager
    from folo_edu.request import Request

    reqs = prefix_workload(50_000, set(), num_requests, prefix_len, question_len,
                           output_len, seed)
    per_request = -(-(prefix_len + question_len + output_len) // block_size)
    blocks = num_blocks or per_request * num_requests + 1
    kv = KVCacheManager(blocks, block_size, True)
    sched = Scheduler(SchedulerConfig(max_num_seqs, max_num_batched_tokens, True), kv,
                      prefix_len + question_len + output_len)
    requests = [Request(f"r{i}", list(r.prompt_token_ids), _greedy(r.max_tokens))
                for i, r in enumerate(reqs)]
    if arrival == "together":
        replay(sched, [(0, r) for r in requests])
    elif arrival == "one_by_one":
        for r in requests:
            replay(sched, [(0, r)])
    else:
        raise ValueError(f"arrival={arrival!r}: expected 'together' or 'one_by_one'")
    total = sum(r.prompt_len for r in reqs)
    ideal = (num_requests - 1) * (min(prefix_len, prefix_len + question_len - 1)
                                  // block_size) * block_size
    return {"prefix_len": prefix_len, "arrival": arrival,
            "hit_rate": kv.prefix_cache_hits / kv.prefix_cache_queries,
            "ideal_hit_rate": ideal / total,
            "requests_with_a_hit": sum(r.num_cached_tokens > 0 for r in requests),
            "num_requests": num_requests}


# ---- the benchmark ---------------------------------------------------------------------
def _engine(cfg: PrefixConfig, device):
    from folo_edu import LLM
    from folo_edu.models.loader import resolve_model_path

    path = str(resolve_model_path(cfg.model))
    llm = LLM(path, dtype=cfg.dtype, device=device.type, max_model_len=cfg.max_model_len,
              max_num_seqs=cfg.max_num_seqs, enable_prefix_caching=True,
              attention_backend=cfg.attention_backend, skip_tokenizer_init=True)
    return path, llm


def _stamp(run: dict, **extra) -> dict:
    return {**extra, **{k: v for k, v in run.items() if k != "token_ids"},
            "load_average_after": load_average()}


def _measure_ttft(engine, cfg, device, prefix_ids, suffixes, threads, rep) -> list[dict]:
    """(a) once: the cold request, then the same request with its prefix cached by a
    request with another suffix (cold and warm alternate their order every repeat)."""
    prompt = prefix_ids + suffixes[0]
    rows = []
    for kind in (("cold", "warm") if rep % 2 == 0 else ("warm", "cold")):
        set_prefix_caching(engine, True)  # an empty cache
        load = load_average()
        if kind == "warm":
            ttft_once(engine, prefix_ids + suffixes[1], device)  # caches the prefix
        run = ttft_once(engine, prompt, device)
        rows.append(_stamp(run, part="a", threads=threads, repeat=rep, setting=kind,
                           load_average_before=load))
        rows[-1]["token_ids"] = run["token_ids"]
        print(f"  (a) threads {threads} repeat {rep} {kind}: TTFT {run['ttft_s']:.3f} s, "
              f"{run['num_cached_tokens']} cached of {run['prompt_len']}, load {load}",
              flush=True)
    return rows


def _shared_setting(engine, hf, name, reqs, system_len, device) -> dict:
    """(b) one setting: folo off / on-cold / on-warm, or transformers."""
    if name == "transformers":
        return hf.run_static_batch(reqs) | {"output_tokens": sum(r.max_tokens for r in reqs)}
    set_prefix_caching(engine, name != "caching-off")
    if name == "caching-on-warm":  # the system prompt computed by an earlier request
        ttft_once(engine, reqs[0].prompt_token_ids[:system_len], device)
    return run_batch(engine, reqs, device)


SHARED_SETTINGS = ("caching-off", "caching-on-cold", "caching-on-warm", "transformers")


def run_prefix(cfg: PrefixConfig) -> dict:
    t_start = time.perf_counter()
    device = resolve_bench_device(cfg.device)
    threads0 = torch.get_num_threads()
    path, llm = _engine(cfg, device)
    engine = llm.llm_engine
    hf_config = engine.config.model_config.hf_config
    exclude = special_token_ids_of(path, hf_config)
    vocab = hf_config.vocab_size
    rng = random.Random(cfg.seed)
    prefix_ids = _random_ids(rng, cfg.ttft_prefix_len, vocab, exclude)
    suffixes = [_random_ids(rng, cfg.ttft_suffix_len, vocab, exclude) for _ in range(2)]
    shared = prefix_workload(vocab, exclude, cfg.num_requests, cfg.system_prompt_len,
                             cfg.question_len, cfg.output_len, cfg.seed + 1)
    hf = None
    if cfg.hf:
        from folo_edu.bench.runners import HFRunner

        hf = HFRunner(path, device, engine.model_runner.dtype)
    result = {
        "benchmark": "m6_prefix", "timestamp": timestamp(), "source": source_version(),
        "machine": machine_info(device), "load_average_at_start": load_average(),
        "config": asdict(cfg),
        "model": {"name": Path(path).name,
                  "num_parameters": sum(p.numel() for p in
                                        engine.model_runner.model.parameters())},
        "folo_edu_settings": {"dtype": str(engine.model_runner.dtype).replace("torch.", ""),
                              "attention_backend": engine.model_runner.backend.name,
                              "block_size": engine.config.tokens_per_block,
                              "num_kv_blocks": engine.kv_manager.num_blocks,
                              "max_num_seqs": engine.config.scheduler_config.max_num_seqs,
                              "max_num_batched_tokens":
                                  engine.config.scheduler_config.max_num_batched_tokens,
                              "enable_chunked_prefill":
                                  engine.config.scheduler_config.enable_chunked_prefill},
        "transformers_settings": hf.settings if hf else None,
        "method": METHOD,
    }
    runs: list[dict] = []
    warm = prefix_workload(vocab, exclude, 2, 32, 8, 2, cfg.seed + 2)
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        set_prefix_caching(engine, True)
        run_batch(engine, warm, device)  # warm-up, not timed
        for rep in range(cfg.repeats):
            runs += _measure_ttft(engine, cfg, device, prefix_ids, suffixes, threads, rep)
    torch.set_num_threads(cfg.threads[0])
    threads = cfg.threads[0]

    # (c) in the engine: requests one after another, for each shared-prefix length
    sweep = []
    for n, length in enumerate(cfg.sweep_prefix_lens):
        reqs = prefix_workload(vocab, exclude, cfg.sweep_num_requests, length,
                               cfg.sweep_question_len, 1, cfg.seed + 10 + n)
        set_prefix_caching(engine, True)
        load = load_average()
        rows = [ttft_once(engine, r.prompt_token_ids, device) for r in reqs]
        kv = engine.kv_manager
        sweep.append({"prefix_len": length, "threads": threads, "load_average_before": load,
                      "hit_rate": kv.prefix_cache_hits / kv.prefix_cache_queries,
                      "num_cached_tokens": [r["num_cached_tokens"] for r in rows],
                      "ttft_s": [r["ttft_s"] for r in rows],
                      "ttft_first_s": rows[0]["ttft_s"],
                      "ttft_later_median_s": median(r["ttft_s"] for r in rows[1:])})
        print(f"  (c) shared prefix {length:5d}: hit rate {sweep[-1]['hit_rate']:.3f}, TTFT "
              f"first {rows[0]['ttft_s']:.3f} s, later {sweep[-1]['ttft_later_median_s']:.3f}"
              f" s, load {load}", flush=True)
    sc, bs = engine.config.scheduler_config, engine.config.tokens_per_block
    # the engine sweep's workload (the engine's one-by-one hit rates must equal these)...
    replayed = [replay_hit_rate(length, cfg.sweep_num_requests, cfg.sweep_question_len, 1,
                                bs, arrival, sc.max_num_batched_tokens, cfg.max_num_seqs,
                                seed=cfg.seed)
                for arrival in ("one_by_one", "together")
                for length in sorted(set(cfg.replay_prefix_lens) | set(cfg.sweep_prefix_lens))]
    # ... and (b)'s: num_requests at once, as in caching-on-cold
    replayed_b = [replay_hit_rate(length, cfg.num_requests, cfg.question_len, cfg.output_len,
                                  bs, "together", sc.max_num_batched_tokens, cfg.max_num_seqs,
                                  seed=cfg.seed)
                  for length in cfg.replay_prefix_lens]

    # (b) the shared system prompt, settings interleaved, order rotated every repeat
    names = [s for s in SHARED_SETTINGS if s != "transformers" or hf is not None]
    reference = None
    for rep in range(cfg.repeats):
        elapsed = time.perf_counter() - t_start
        if rep and cfg.max_wall_s is not None:
            per_repeat = sum(r["wall_s"] for r in runs if r["part"] == "b" and r["repeat"] == 0)
            if elapsed + per_repeat * 1.15 > cfg.max_wall_s:
                print(f"  (b) stopping after {rep} repeat(s): another would pass "
                      f"max_wall_s={cfg.max_wall_s:.0f} s", flush=True)
                break
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            load = load_average()
            run = _shared_setting(engine, hf, name, shared, cfg.system_prompt_len, device)
            row = _stamp(run, part="b", threads=threads, repeat=rep, setting=name,
                         load_average_before=load)
            row["output_tok_s"] = run["output_tokens"] / run["wall_s"]
            if reference is None and name == "caching-off":
                reference = run["token_ids"]
            row["token_ids"] = run["token_ids"]
            runs.append(row)
            print(f"  (b) repeat {rep} {name:>16}: {row['output_tok_s']:.2f} output tok/s, "
                  f"{run['wall_s']:.1f} s"
                  + (f", hit rate {run['prefix_cache_hit_rate']:.3f}"
                     if "prefix_cache_hit_rate" in run else "") + f", load {load}", flush=True)
    torch.set_num_threads(threads0)

    result["ttft"] = _ttft_medians(runs, cfg)
    result["shared_prompt"] = _shared_medians(runs, names)
    result["shared_prompt"]["workload"] = {
        "num_requests": cfg.num_requests, "system_prompt_len": cfg.system_prompt_len,
        "question_len": cfg.question_len, "output_len": cfg.output_len,
        "prompt_tokens": sum(r.prompt_len for r in shared)}
    result["hit_rate_sweep"] = {"engine_one_by_one": sweep, "replay": replayed,
                                "replay_shared_prompt_together": replayed_b}
    result["agreement"] = _agreement(runs)
    result["goals"] = _goals(result)
    result["runs"] = [{k: v for k, v in r.items() if k != "token_ids"} for r in runs]
    result["load_average_at_end"] = load_average()
    result["bench_wall_s"] = time.perf_counter() - t_start
    print_prefix(result)
    return result


METHOD = {
    "ttft": "(a) a prompt of ttft_prefix_len random tokens + ttft_suffix_len more, "
            "max_tokens=1, alone in the engine; wall time from add_request to the step "
            "that returned its token. cold: a fresh, empty KV cache manager; warm: the same, "
            "then a request with the same prefix and another suffix runs first (untimed), "
            "so the prefix's full blocks are cached. Cold and warm alternate their order "
            "every repeat; medians over the repeats",
    "shared_prompt": "(b) num_requests prompts = one system prompt of system_prompt_len "
                     "random tokens + question_len tokens of their own; greedy, EOS "
                     "ignored, output_len tokens each; all added at once, the engine "
                     "stepped until all finish. Output tokens/s = output tokens / wall "
                     "time. caching-off: enable_prefix_caching=False; caching-on-cold: on, "
                     "empty cache at the start (requests admitted in the same step share "
                     "the blocks the first one fills: blocks are cached at allocation); caching-on-warm: on, the system prompt computed by one earlier "
                     "request (untimed). transformers: generate on one static batch of all "
                     "the prompts (equal lengths, so no padding). Settings interleaved, "
                     "order rotated every repeat; medians",
    "hit_rate": "(c) prefix_cache_hits / prefix_cache_queries (tokens) of get_stats(). "
                "engine_one_by_one: the default model, sweep_num_requests requests sharing "
                "a prefix, each added after the previous one finished, so the first "
                "request's TTFT is cold and the later ones' warm. replay: the same kind of "
                "workload (num_requests, question_len, output_len of (b)) on the real "
                "Scheduler and KVCacheManager with a fake model (bench.prefix."
                "replay_hit_rate) with the same lengths, for both arrival patterns (the "
                "one-by-one hit rates equal the engine's: the cache is token ids and "
                "scheduling, not the model); replay_shared_prompt_together: (b)'s "
                "num_requests, question_len and output_len, all at once; ideal_hit_rate "
                "assumes every request but the first finds all full blocks of the prefix",
    "engine_swap": "one engine; bench.prefix.set_prefix_caching gives it a fresh "
                   "KVCacheManager between runs (caching on or off, empty cache), so the "
                   "weights load once",
}


def _ttft_medians(runs, cfg) -> list[dict]:
    rows = []
    for threads in cfg.threads:
        mine = [r for r in runs if r["part"] == "a" and r["threads"] == threads]
        cold = [r for r in mine if r["setting"] == "cold"]
        warm = [r for r in mine if r["setting"] == "warm"]
        c, w = median(r["ttft_s"] for r in cold), median(r["ttft_s"] for r in warm)
        cc, wc = median(r["ttft_cpu_s"] for r in cold), median(r["ttft_cpu_s"] for r in warm)
        rows.append({"threads": threads, "repeats": len(cold), "cold_ttft_s": c,
                     "warm_ttft_s": w, "speedup": c / w if w else None,
                     "cold_ttft_cpu_s": cc, "warm_ttft_cpu_s": wc,
                     "speedup_cpu": cc / wc if wc else None,
                     "warm_num_cached_tokens": median(r["num_cached_tokens"] for r in warm),
                     "prompt_len": cfg.ttft_prefix_len + cfg.ttft_suffix_len})
    return rows


_B_KEYS = ("output_tok_s", "wall_s", "cpu_s", "prefix_cache_hit_rate", "cached_tokens",
           "requests_with_a_hit", "ttft_median_s", "num_steps")


def _shared_medians(runs, names) -> dict:
    out = {"settings": []}
    for name in names:
        mine = [r for r in runs if r["part"] == "b" and r["setting"] == name]
        row = {"setting": name, "repeats": len(mine)}
        for k in _B_KEYS:
            if any(k in r for r in mine):
                row[k] = median(r.get(k) for r in mine)
        out["settings"].append(row)
    tok = {r["setting"]: r["output_tok_s"] for r in out["settings"]}
    off = tok.get("caching-off")
    out["speedup_vs_caching_off"] = {k: v / off for k, v in tok.items() if off}
    hf = tok.get("transformers")
    out["speedup_vs_transformers"] = {k: v / hf for k, v in tok.items() if hf}
    return out


def _agreement(runs) -> dict:
    """Greedy tokens of every run against the first caching-off run of (b), and cold
    against warm in (a)."""
    b = [r for r in runs if r["part"] == "b"]
    ref = next((r["token_ids"] for r in b if r["setting"] == "caching-off"), None)
    out = {}
    for r in b:
        if ref is not None and r["setting"] not in out:
            out[r["setting"]] = agreement(r["token_ids"], ref)
    a = [r["token_ids"] for r in runs if r["part"] == "a"]
    out["ttft_cold_vs_warm_first_token_identical"] = all(t == a[0] for t in a) if a else None
    return out


def _goals(res) -> list[dict]:
    goals = []
    for r in res["ttft"]:
        goals.append({"goal": f"M6 (a): TTFT with a cached {res['config']['ttft_prefix_len']}"
                              f"-token prefix >= {GOAL_TTFT}x faster than cold "
                              f"({r['threads']} thread(s))",
                      "ratio": r["speedup"], "met": (r["speedup"] or 0) >= GOAL_TTFT})
    sp = res["shared_prompt"]["speedup_vs_caching_off"]
    for name in ("caching-on-cold", "caching-on-warm"):
        if name in sp:
            goals.append({"goal": f"M6 (b): shared system prompt, {name} >= "
                                  f"{GOAL_THROUGHPUT}x the output tok/s of caching-off",
                          "ratio": sp[name], "met": sp[name] >= GOAL_THROUGHPUT})
    return goals


def print_prefix(res: dict) -> None:
    c, m = res["config"], res["machine"]
    print(f"\nM6 prefix caching: {res['model']['name']}, {m['device']} ({m['cpu_model']})")
    print(f"(a) TTFT of a {c['ttft_prefix_len']} + {c['ttft_suffix_len']}-token prompt, "
          f"medians of {c['repeats']}:")
    print(table(["threads", "cold s", "warm s", "speedup", "speedup (CPU time)", "cached"],
                [[r["threads"], r["cold_ttft_s"], r["warm_ttft_s"], r["speedup"],
                  r["speedup_cpu"], r["warm_num_cached_tokens"]] for r in res["ttft"]]))
    sp = res["shared_prompt"]
    w = sp["workload"]
    print(f"(b) {w['num_requests']} requests, a {w['system_prompt_len']}-token system prompt "
          f"+ {w['question_len']}-token questions, {w['output_len']} output tokens each:")
    print(table(["setting", "output tok/s", "wall s", "vs off", "vs transformers", "hit rate",
                 "repeats"],
                [[r["setting"], r["output_tok_s"], r["wall_s"],
                  sp["speedup_vs_caching_off"].get(r["setting"]),
                  sp["speedup_vs_transformers"].get(r["setting"]),
                  r.get("prefix_cache_hit_rate"), r["repeats"]] for r in sp["settings"]]))
    print("(c) hit rate against the shared-prefix length:")
    rep = {(r["arrival"], r["prefix_len"]): r["hit_rate"] for r in res["hit_rate_sweep"]["replay"]}
    eng = {r["prefix_len"]: r["hit_rate"] for r in res["hit_rate_sweep"]["engine_one_by_one"]}
    ideal = {r["prefix_len"]: r["ideal_hit_rate"] for r in res["hit_rate_sweep"]["replay"]}
    print(table(["prefix", "engine, one by one", "replay one by one", "replay together",
                 "ideal"],
                [[n, eng.get(n), rep.get(("one_by_one", n)), rep.get(("together", n)),
                  ideal[n]] for n in sorted(ideal)]))
    for g in res["goals"]:
        print(f"{g['goal']}: {g['ratio']:.2f} -> {'MET' if g['met'] else 'NOT MET'}")
    print(f"load average {res['load_average_at_start']} -> {res['load_average_at_end']}, "
          f"{res['bench_wall_s']:.0f} s in all")


def run(cfg: PrefixConfig) -> dict:
    """Run the prefix-caching benchmark, print its tables, save its JSON; return it."""
    res = run_prefix(cfg)
    if cfg.output != "-":
        out = save_json(cfg.output or cfg.default_output(resolve_bench_device(cfg.device)), res)
        print(f"saved {out}")
    return res
