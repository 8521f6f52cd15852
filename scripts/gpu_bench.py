"""GPU benchmark matrix (milestone M4): attention backends, eager vs CUDA graphs, and
transformers, on the Qwen3-0.6B shape with nano-vllm's bench workload.

The workload is nano-vllm's: 256 requests, prompt and output lengths each uniform in
[100, 1024], random token ids, greedy, ignore_eos, so every request yields exactly its
output length. The model has Qwen3-0.6B's published shape with random bf16 weights
(nothing is downloaded): throughput does not depend on the values.

Each configuration below runs in a fresh LLM, by default in its own Python process, so
a crash (say an illegal memory access in a kernel) or a hang costs that configuration
alone. Each is warmed up on a few short requests, then timed ONCE (the GPU lease is 15
minutes; the JSON says so): output tokens / wall seconds of the whole generate loop.

    name                     engine        backend      decode steps  workload     cap
    triton-graphs            folo_edu      triton       CUDA graphs   full (256)  120 s
    triton-eager             folo_edu      triton       eager         full         60 s
    transformers@subset      transformers  (its sdpa)   generate      subset (64)  75 s
    triton-graphs@subset     folo_edu      triton       CUDA graphs   subset       40 s
    sdpa-eager               folo_edu      sdpa         eager         full         60 s
    flex-eager               folo_edu      flex         eager         full         60 s
    sdpa-eager@subset        folo_edu      sdpa         eager         subset       50 s
    paged-torch-eager@small  folo_edu      paged-torch  eager         small (16)   40 s

They run in that order, most important first. A global deadline (--deadline-s) bounds
the whole run: each configuration gets at most its cap (of engine work: init, warm-up,
timed run; --cap NAME=S changes one) and what is left; one that reaches it stops
between engine steps and is recorded as "partial" (its tok/s covers only the part it
ran); one that cannot start in time is "skipped". Ratios use complete runs; where a
run stopped early, two folo_edu runs are still compared on the time each took to make
the same first output tokens ("prefix_value": the scheduler does not depend on the
backend, so both did the same work up to there). transformers runs the subset in
static batches with left padding (only the useful tokens count), since the whole 256
did not finish in 300 s on the last run.

    python scripts/gpu_bench.py --out gpu_bench.json                # on a GPU
    python scripts/gpu_bench.py --device cpu --tiny --out /tmp/t.json  # CPU smoke

--tiny swaps in a tiny random Qwen3 (folo_edu.models.tiny) and a few short requests,
and adds the naive backend; on a CPU triton runs in its interpreter and is skipped
once it takes longer than its 20 s cap. scripts/gpu_check.sh runs this on a lent GPU.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing folo_edu
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# folo_edu first: on a machine without CUDA it sets TRITON_INTERPRET=1 before anything
# imports triton.
from folo_edu.bench.machine import synchronize  # noqa: E402

# Qwen3-0.6B's config.json on the Hugging Face hub (Qwen/Qwen3-0.6B), as overrides of
# the tiny Qwen3 config (folo_edu.models.tiny), which supplies architecture and tokens.
QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  tie_word_embeddings=True, vocab_size=151936,
                  max_position_embeddings=40960, rope_theta=1000000.0)
TINY_NAME = "qwen3-odd-headdim"
SPECIAL_IDS = {0, 1, 2}  # pad, bos, eos of the random configs: never in a prompt

# Published reference points for the same shape (nano-vllm's README: Qwen3-0.6B,
# 256 requests, input and output lengths uniform in 100-1024, RTX 4070 Laptop 8 GB).
REFERENCE_POINTS = {
    "nano_vllm_rtx4070_laptop_output_tok_s": 1434,
    "vllm_rtx4070_laptop_output_tok_s": 1362,
    "source": "nano-vllm README (GeeeekExplorer/nano-vllm), same model shape and workload",
    "note": "a different and smaller GPU: context for the numbers here, not a same-machine ratio",
    "folo_edu_m2_h200_sdpa_eager_output_tok_s": 1291,
    "folo_edu_m2_note": "M2-era folo_edu on an H200 (commit 8be7434), eager SDPA, 256 requests; "
                        "benchmarks/results/gpu/gpu_bench_h200_256req.json",
}

# name -> settings. cap_s: the most seconds of engine work (init, warm-up, timed run) on
# a GPU; TINY_CAP_S replaces it with --tiny. DEFAULT_* order is the run order, the most
# important first. The eager runs take ~100 s each in full (1,024 decode steps at about
# 100 ms, M2 on an H200): their caps stop them early, and prefix_ratio still compares
# them with the others on the same first output tokens.
CONFIGS = {
    "triton-graphs": dict(engine="folo", backend="triton", eager=False, workload="full",
                          cap_s=120),
    "triton-eager": dict(engine="folo", backend="triton", eager=True, workload="full",
                         cap_s=60),
    "transformers@subset": dict(engine="transformers", workload="subset", cap_s=75),
    "triton-graphs@subset": dict(engine="folo", backend="triton", eager=False,
                                 workload="subset", cap_s=40),
    "sdpa-eager": dict(engine="folo", backend="sdpa", eager=True, workload="full", cap_s=60),
    "flex-eager": dict(engine="folo", backend="flex", eager=True, workload="full", cap_s=60),
    "sdpa-eager@subset": dict(engine="folo", backend="sdpa", eager=True, workload="subset",
                              cap_s=50),
    "paged-torch-eager@small": dict(engine="folo", backend="paged-torch", eager=True,
                                    workload="small", cap_s=40),
    # Not in the default GPU list: naive is the slow reference (tiny smoke only), and
    # torch.compile's compile time does not fit the default budget.
    "naive-eager": dict(engine="folo", backend="naive", eager=True, workload="full", cap_s=60),
    "triton-graphs-compile": dict(engine="folo", backend="triton", eager=False,
                                  compile=True, workload="full", cap_s=180),
}
DEFAULT_GPU = ["triton-graphs", "triton-eager", "transformers@subset", "triton-graphs@subset",
               "sdpa-eager", "flex-eager", "sdpa-eager@subset", "paged-torch-eager@small"]
# On a CPU, CUDA graphs are off, so triton-graphs would repeat triton-eager: only the
# subset one runs, to show the engine's graph status and the ratio against transformers.
DEFAULT_TINY = ["sdpa-eager", "naive-eager", "paged-torch-eager@small", "flex-eager",
                "triton-eager", "transformers@subset", "sdpa-eager@subset",
                "triton-graphs@subset"]
TINY_CAP_S = 20.0
MIN_START_S = 25.0   # a configuration is not started with less time than this left (GPU)
# A config's budget covers its own work: engine init, warm-up and the timed run. A child
# process also needs time to import torch before and to exit after: GRACE_S, in which
# it must be done, or it is killed.
GRACE_S = 15.0
STOP_MARGIN_S = 3.0  # a run stops at least this long before the child's hard end
PROGRESS_EVERY = 10  # engine steps between two (seconds, tokens) points of a run


def log(msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- model and workload ------------------------------------------------------------
def model_spec(tiny: bool) -> dict:
    return {"tiny": TINY_NAME, "vocab_size": 256, "max_position_embeddings": 512} if tiny \
        else dict(QWEN3_0_6B)


def build_model(folder: Path, tiny: bool) -> Path:
    """A random HF folder of the benchmark's shape; reused if one with the same spec is
    there already (gpu_check.sh builds it in the background while the tests run)."""
    folder = Path(folder)
    marker = folder / "folo_gpu_bench_model.json"
    spec = model_spec(tiny)
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return folder
    t0 = time.perf_counter()
    if tiny:
        from folo_edu.models.tiny import make_tiny_model

        make_tiny_model(folder, TINY_NAME, vocab_size=256, max_position_embeddings=512)
    else:
        from transformers import AutoModelForCausalLM

        from folo_edu.models.tiny import tiny_hf_config

        # The default init (std 0.02) keeps bf16 activations finite over 28 layers.
        config = tiny_hf_config(TINY_NAME, **QWEN3_0_6B)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
    marker.write_text(json.dumps(spec))
    log(f"built the {'tiny' if tiny else 'Qwen3-0.6B-shape'} random model in "
        f"{time.perf_counter() - t0:.1f} s at {folder}")
    return folder


def make_workloads(args) -> dict:
    """full, subset (its first --subset requests) and small (its first --small)."""
    from folo_edu.bench.workloads import offline_workload

    lens = (4, 16) if args.tiny else (100, 1024)
    vocab = 256 if args.tiny else QWEN3_0_6B["vocab_size"]
    full = offline_workload(vocab, SPECIAL_IDS, args.requests, lens, lens, seed=args.seed)
    reqs = {"full": full, "subset": full[:args.subset], "small": full[:args.small]}
    info = {}
    for name, rs in reqs.items():
        info[name] = {"num_requests": len(rs), "prompt_len_range": list(lens),
                      "output_len_range": list(lens), "seed": args.seed,
                      "total_prompt_tokens": sum(r.prompt_len for r in rs),
                      "total_output_tokens": sum(r.max_tokens for r in rs),
                      "longest_output": max(r.max_tokens for r in rs),
                      "of": "full" if name == "full" else f"the first {len(rs)} requests of full"}
    return {"requests": {k: [[r.prompt_token_ids, r.max_tokens] for r in v]
                         for k, v in reqs.items()}, "info": info}


# ---- one configuration (in the child process, or in-process with --isolate none) ---
def _gib(n):
    return round(n / 2**30, 3)


def _memory(device) -> dict:
    if device.type != "cuda":
        return {"peak_gpu_mem_gib": None, "peak_gpu_reserved_gib": None}
    return {"peak_gpu_mem_gib": _gib(torch.cuda.max_memory_allocated()),
            "peak_gpu_reserved_gib": _gib(torch.cuda.max_memory_reserved())}


def _outcome(reqs, stopped: bool, finished: int, tokens: int, wall: float) -> dict:
    """The fields every timed run reports, folo_edu's and transformers' alike."""
    return {"status": "partial" if stopped else "ok", "requests": len(reqs),
            "finished_requests": finished, "output_tokens": tokens,
            "expected_output_tokens": sum(n for _, n in reqs), "wall_s": wall,
            "output_tok_s": tokens / wall if wall > 0 else None}


def _timed_phase(res: dict, phase: str, fn):
    """Run ``fn()`` as ``phase`` ("init", "warmup"): res["phase"] names it while it runs
    (an error then says where), res[phase + "_s"] gets its seconds."""
    res["phase"] = phase
    t = time.perf_counter()
    out = fn()
    res[f"{phase}_s"] = time.perf_counter() - t
    return out


def _folo_generate(llm, reqs, stop_at: float, tag: str) -> dict:
    """All requests added at once, then engine steps until done or stop_at (checked
    between steps). Returns the run's numbers; the clock covers adds and steps."""
    from folo_edu import RequestOutputKind, SamplingParams

    engine = llm.llm_engine
    device = engine.model_runner.device
    preempt0 = engine.scheduler.num_preemptions
    expected = {f"{tag}-{i}": n for i, (_, n) in enumerate(reqs)}
    synchronize(device)
    t0 = time.perf_counter()
    for i, (prompt, n) in enumerate(reqs):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,
                                          output_kind=RequestOutputKind.FINAL_ONLY))
    done: dict[str, int] = {}
    steps, stopped = 0, False
    # (seconds, output tokens so far) every PROGRESS_EVERY steps: every request in a step
    # samples one token (no chunked prefill), so len(engine.last_step) counts them.
    made, progress = 0, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = len(out.outputs[0].token_ids)
        steps += 1
        made += len(engine.last_step)
        if steps % PROGRESS_EVERY == 0:
            progress.append([round(time.perf_counter() - t0, 4), made])
        if engine.has_unfinished_requests() and time.perf_counter() > stop_at:
            stopped = True
            break
    synchronize(device)
    wall = time.perf_counter() - t0
    progress.append([round(wall, 4), made])
    tokens = sum(done.values())
    if stopped:  # count what the unfinished requests made so far, then drop them
        left = [rid for rid in expected if rid not in done]
        live = engine.scheduler.requests
        tokens += sum(len(live[rid].output_token_ids) for rid in left if rid in live)
        for rid in left:
            try:
                engine.abort_request(rid)
            except KeyError:  # it finished after all
                pass
    return {**_outcome(reqs, stopped, len(done), tokens, wall), "engine_steps": steps,
            "progress": progress if made == tokens else None,
            "exact_lengths": all(done[r] == expected[r] for r in done),
            "num_preemptions": engine.scheduler.num_preemptions - preempt0}


def _warmup_requests(reqs, tiny: bool):
    """The first k requests with outputs of 2..k+1 tokens, so the batch shrinks one by
    one through every small size: kernels compile and graphs replay before timing."""
    k = 2 if tiny else 17
    return [(p, 2 + i) for i, (p, _) in enumerate(reqs[:k])]


def run_folo(cfg: dict, spec: dict, reqs, stop_at: float, res: dict) -> dict:
    """Fills res as it goes, so an exception leaves what was measured before it."""
    from folo_edu import LLM

    device = torch.device(spec["device"])
    kw = dict(spec["engine_settings"], device=spec["device"], skip_tokenizer_init=True,
              attention_backend=cfg["backend"], enforce_eager=cfg["eager"],
              **({"torch_compile": True} if cfg.get("compile") else {}))
    res["engine_kwargs"] = {k: v for k, v in kw.items() if k != "device"}
    llm = _timed_phase(res, "init", lambda: LLM(spec["model_path"], **kw))
    runner = llm.llm_engine.model_runner
    res["attention_backend"] = runner.backend.name
    res["cuda_graph_status"] = runner.cuda_graph_status
    res["num_kv_blocks"] = llm.llm_engine.kv_manager.num_blocks
    if device.type == "cuda":
        res["gpu_mem_after_init_gib"] = _gib(torch.cuda.memory_allocated())
    warm = _timed_phase(res, "warmup", lambda: _folo_generate(
        llm, _warmup_requests(reqs, spec["tiny"]), stop_at, "warmup"))
    if warm["status"] != "ok":
        res.update(status="partial", reason="the budget ran out during the warm-up",
                   output_tok_s=None)
        return res
    res["phase"] = "run"
    res.update(_folo_generate(llm, reqs, stop_at, "bench"))
    res.update(_memory(device))
    res.pop("phase")
    del llm, runner
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def run_transformers(spec: dict, reqs, stop_at: float, res: dict) -> dict:
    """transformers generate in static batches of hf_batch, left-padded to the batch's
    longest prompt, run to its longest output; only each row's own tokens count."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    from folo_edu.bench.runners import HFRunner

    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["engine_settings"]["dtype"])
    hf = _timed_phase(res, "init", lambda: HFRunner(spec["model_path"], device, dtype))
    res["settings"] = hf.settings

    class Deadline(StoppingCriteria):
        """Stop every row once the clock passes stop_at (a fresh one per generate)."""

        hit = False

        def __call__(self, input_ids, scores, **kwargs):
            self.hit = self.hit or time.perf_counter() > stop_at
            return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool,
                              device=input_ids.device)

    def generate(batch):
        ids, mask = hf.left_padded([p for p, _ in batch])
        steps = max(n for _, n in batch)
        out = hf.generate(ids, mask, steps, stopping_criteria=StoppingCriteriaList([Deadline()]))
        made = out.shape[1] - ids.shape[1]
        return sum(min(made, n) for _, n in batch), made == steps

    _timed_phase(res, "warmup", lambda: generate([(p[:32], 4) for p, _ in reqs[:2]]))
    res["phase"] = "run"
    batch_size = spec["hf_batch"]
    tokens, finished, stopped = 0, 0, False
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch_size):
        batch = reqs[i:i + batch_size]
        made, complete = generate(batch)
        tokens += made
        if not complete:
            stopped = True
            break
        finished += len(batch)
        if i + batch_size < len(reqs) and time.perf_counter() > stop_at:
            stopped = True
            break
    synchronize(device)
    wall = time.perf_counter() - t0
    res.pop("phase")
    res.update({**_outcome(reqs, stopped, finished, tokens, wall), "batch_size": batch_size,
                "cuda_graph_status": "n/a (transformers generate)",
                "attention_backend": hf.settings.get("attn_implementation")})
    res.update(_memory(device))
    return res


def run_config(spec: dict) -> dict:
    """Run one configuration described by spec; never raises."""
    start = time.perf_counter()
    # The budget counts from now; the hard end (on the wall clock both processes share)
    # is when the parent kills this process.
    stop_at = min(start + spec["budget_s"],
                  start + spec["hard_end_at"] - time.time() - STOP_MARGIN_S)
    cfg = spec["config"]
    reqs = [tuple(r) for r in json.loads(Path(spec["workload_path"]).read_text())
            ["requests"][cfg["workload"]]]
    torch.manual_seed(0)
    res: dict = {}
    try:
        if spec["device"] == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if cfg["engine"] == "transformers":
            run_transformers(spec, reqs, stop_at, res)
        else:
            run_folo(cfg, spec, reqs, stop_at, res)
    except Exception as e:  # noqa: BLE001  - recorded, and the next config runs
        traceback.print_exc()
        res.update(status="error", error=f"{type(e).__name__}: {e}"[:2000],
                   error_phase=res.pop("phase", None), output_tok_s=None,
                   traceback_tail=traceback.format_exc().strip().splitlines()[-6:])
        try:  # after a CUDA error this can fail too
            res.update(_memory(torch.device(spec["device"])))
        except Exception:  # noqa: BLE001
            pass
    res["process_s"] = time.perf_counter() - start
    if res.get("status") == "partial" and "reason" not in res:
        res["reason"] = (f"stopped at its {spec['budget_s']:.0f} s budget: tok/s covers only "
                         "the part that ran (ratios compare it only on the same first "
                         "output tokens: prefix_value)")
    return res


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # Import before the budget's clock starts: it measures the engine, not Python.
    if spec["config"]["engine"] == "transformers":
        from transformers import AutoModelForCausalLM  # noqa: F401

        import folo_edu.bench.runners  # noqa: F401
    else:
        import folo_edu.attention  # noqa: F401
        import folo_edu.engine.llm  # noqa: F401
    res = run_config(spec)
    Path(spec["result_path"]).write_text(json.dumps(res, default=str))
    return 0


# ---- the parent: the matrix, the deadline, the JSON --------------------------------
def source_info() -> dict:
    """The git commit if there is one (a lent GPU machine gets a copy without history;
    FOLO_EDU_COMMIT may name it), and a hash of the sources that ran either way."""
    from folo_edu.bench.machine import source_version

    info = source_version()
    if info.get("commit") is None and os.environ.get("FOLO_EDU_COMMIT"):
        info["commit"] = os.environ["FOLO_EDU_COMMIT"]
        info["commit_from"] = "FOLO_EDU_COMMIT"
    h = hashlib.sha256()
    files = sorted([*ROOT.glob("folo_edu/**/*.py"), *ROOT.glob("scripts/*")])
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    info["sources_sha256"] = h.hexdigest()[:16]
    info["sources_hashed"] = "folo_edu/**/*.py and scripts/*"
    return info


def machine(device) -> dict:
    from folo_edu.bench.machine import machine_info

    info = machine_info(device)
    from importlib import metadata

    try:
        info["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name()
    return info


def why_not(name: str, cfg: dict, results: dict, device) -> tuple[str | None, str | None]:
    """``(status, reason)`` when cfg is not to run: "unsupported" when its attention
    backend cannot run here; "skipped" when a config of the same settings already failed,
    or, on a CPU, when any run of its backend failed or ran out of time (the triton
    interpreter is very slow). ``(None, None)`` otherwise."""
    if cfg["engine"] != "folo":
        return None, None
    from folo_edu.attention import unavailable_reason

    reason = unavailable_reason(cfg["backend"])
    if reason:
        return "unsupported", reason
    for other, r in results.items():
        o = CONFIGS.get(other, {})
        if o.get("engine") != "folo" or o["backend"] != cfg["backend"]:
            continue
        same = o["eager"] == cfg["eager"] and o.get("compile") == cfg.get("compile")
        if same and r["status"] in ("error", "killed"):
            return "skipped", (f"{other} with the same settings failed: "
                               f"{r.get('error', r['status'])}")[:500]
        if device.type == "cpu" and r["status"] in ("error", "killed", "partial", "unsupported"):
            return "skipped", (f"{other} ({cfg['backend']} on CPU) was {r['status']}: "
                               f"{r.get('reason') or r.get('error') or ''}")[:500]
    return None, None


def _time_to(progress, n):
    """Seconds until n output tokens, interpolated between the recorded points."""
    prev_t, prev_n = 0.0, 0
    for t, m in progress:
        if m >= n:
            return prev_t + (t - prev_t) * (n - prev_n) / max(m - prev_n, 1)
        prev_t, prev_n = t, m
    return None


def prefix_ratio(a: dict | None, b: dict | None) -> dict:
    """When a run stopped early: a's speed over b's on the same first N output tokens.

    Two folo_edu runs of one workload schedule the same requests in the same order
    (the scheduler never looks at the backend), so the time each took to reach the N-th
    output token compares the same work. N is the smaller of the two runs' totals.
    """
    pa, pb = (r.get("progress") if r else None for r in (a, b))
    if not pa or not pb:
        return {}
    n = min(pa[-1][1], pb[-1][1])
    ta, tb = _time_to(pa, n), _time_to(pb, n)
    if not n or not ta or not tb:
        return {}
    return {"prefix_value": round(tb / ta, 3), "prefix_output_tokens": n,
            "prefix_note": "a run stopped early: the ratio of the times each took to make "
                           "the first prefix_output_tokens output tokens of the same workload"}


def ratios(results: dict, names: list[str]) -> dict:
    def tok_s(n):
        r = results.get(n)
        return r["output_tok_s"] if r and r.get("status") == "ok" else None

    def entry(a, b):
        va, vb = tok_s(a), tok_s(b)
        e = {"value": None if va is None or not vb else round(va / vb, 3), "of": [a, b]}
        if e["value"] is None:
            e["missing"] = {n: (results.get(n) or {}).get("status", "not in this run")
                            for n in (a, b) if tok_s(n) is None}
            e.update(prefix_ratio(results.get(a), results.get(b)))
        return e

    out: dict = {"graphs_vs_eager": {}, "vs_sdpa_eager": {}, "vs_transformers": {}}
    for n in names:
        c = CONFIGS[n]
        suffix = n[n.index("@"):] if "@" in n else ""
        if c["engine"] != "folo":
            continue
        if not c["eager"] and not c.get("compile"):
            eager = f"{c['backend']}-eager{suffix}"
            if eager in names:
                out["graphs_vs_eager"][n] = entry(n, eager)
        base = f"sdpa-eager{suffix}"
        if n != base and base in names:
            out["vs_sdpa_eager"][n] = entry(n, base)
        hf = f"transformers{suffix}"
        if hf in names:
            out["vs_transformers"][n] = entry(n, hf)
    return out


class _Terminated(Exception):
    pass


def _on_term(signum, frame):
    raise _Terminated(f"signal {signum}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="the JSON file to write (rewritten after every config)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true",
                    help="tiny random Qwen3 and a few short requests (a CPU smoke test)")
    ap.add_argument("--deadline-s", type=float, default=380.0,
                    help="stop starting configs, and stop running ones, by this many seconds "
                         "after the start (default 380)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated names in run order (default: the mode's list; "
                         f"known: {', '.join(CONFIGS)})")
    ap.add_argument("--cap", action="append", default=[], metavar="NAME=SECONDS",
                    help="change one config's cap (repeatable)")
    ap.add_argument("--requests", type=int, default=None, help="full workload (256; tiny 6)")
    ap.add_argument("--subset", type=int, default=None, help="subset workload (64; tiny 3)")
    ap.add_argument("--small", type=int, default=None, help="small workload (16; tiny 3)")
    ap.add_argument("--hf-batch", type=int, default=64, help="transformers static batch size")
    ap.add_argument("--kv-gib", type=float, default=None,
                    help="KV cache size for folo_edu, the same for every config (GPU "
                         "default: 40 GiB, or half the GPU's memory if that is less)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default=None,
                    help="build (or reuse) the random model here instead of a temp folder")
    ap.add_argument("--build-model-only", action="store_true",
                    help="only build the model in --model-dir, then exit")
    ap.add_argument("--isolate", default="process", choices=["process", "none"],
                    help="process: each config in its own Python process (default); "
                         "none: all in this process")
    ap.add_argument("--sources-hash", action="store_true",
                    help="print the hash of the sources (source.sources_sha256) and exit: "
                         "match a result from a machine without git history to a commit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap, ap.parse_args(argv)


def plan(ap, args) -> tuple[list[str], dict]:
    """Fill the mode's defaults into args; return the config names in run order and the
    --cap overrides. Bad names or caps end the program with a usage error."""
    tiny = args.tiny
    args.requests = args.requests or (6 if tiny else 256)
    args.subset = min(args.subset or (3 if tiny else 64), args.requests)
    args.small = min(args.small or (3 if tiny else 16), args.requests)
    names = args.configs.split(",") if args.configs else (DEFAULT_TINY if tiny else DEFAULT_GPU)
    names = [n.strip() for n in names if n.strip()]
    caps = {}
    for item in args.cap:
        name, _, value = item.partition("=")
        try:
            caps[name] = float(value)
        except ValueError:
            ap.error(f"--cap {item!r}: expected NAME=SECONDS")
    unknown = [n for n in [*names, *caps] if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    return names, caps


def engine_settings(args, device) -> dict:
    """The folo_edu engine settings every config shares."""
    if args.kv_gib is not None:
        kv_gib = args.kv_gib
    elif args.tiny:
        kv_gib = 1 / 64
    else:  # 40 GiB (374k tokens: the 256 requests never preempt), or half a smaller GPU
        kv_gib = min(40.0, 0.5 * torch.cuda.get_device_properties(0).total_memory / 2**30)
    return {"dtype": "bfloat16" if device.type == "cuda" else "float32",
            "max_model_len": 128 if args.tiny else 2048,
            "max_num_seqs": args.requests if args.tiny else 256,
            "max_num_batched_tokens": 512 if args.tiny else 16384,
            "kv_cache_memory_bytes": int(kv_gib * 2**30)}


def new_result(args, argv, settings: dict) -> dict:
    """The JSON's skeleton, before any config has run."""
    from folo_edu.bench.metrics import timestamp

    return {
        "benchmark": "scripts/gpu_bench.py: M4 matrix (attention backends, eager vs CUDA "
                     "graphs, transformers) on nano-vllm's bench shape",
        "created": timestamp(), "argv": sys.argv[1:] if argv is None else list(argv),
        "mode": "tiny" if args.tiny else "qwen3-0.6b",
        "machine": None, "source": source_info(),
        "model": {"name": "tiny random Qwen3 (folo_edu.models.tiny)" if args.tiny
                  else "Qwen3-0.6B config, random bf16 weights (nothing downloaded)",
                  "spec": model_spec(args.tiny)},
        "engine_settings": settings,
        "timing": {"timed_runs_per_config": 1,
                   "note": "ONE timed run per config, not a median: the GPU lease is 15 "
                           "minutes. Each config warms up on short requests first.",
                   "measure": "output tokens / wall seconds from the first add_request (or "
                              "generate call) to the last token, device synchronized",
                   "peak_memory_note": "peak_gpu_mem_gib includes the KV cache, which "
                                       "folo_edu preallocates at kv_cache_memory_bytes"},
        "deadline_s": args.deadline_s, "isolation": args.isolate,
        "workloads": None, "configs": [], "results": {}, "skipped": [], "ratios": {},
        "reference_points": REFERENCE_POINTS, "elapsed_s": None, "finished": False,
    }


def run_in_child(spec: dict, spec_path: Path, timeout: float) -> dict:
    """run_config(spec) in a fresh Python process, killed after ``timeout`` seconds."""
    spec_path.write_text(json.dumps(spec))
    t = time.perf_counter()
    # Its own process group (not session): killable as a group, and ended with everything
    # else if this process dies.
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                              "--child", str(spec_path)], **group)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "killed", "error": f"still running {timeout:.0f} s after its start "
                "(a hang, or one engine step longer than the rest of its budget); killed",
                "process_s": time.perf_counter() - t}
    finally:  # a timeout, or this process interrupted while it waits
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    rp = Path(spec["result_path"])
    return json.loads(rp.read_text()) if rp.is_file() else {
        "status": "error", "error": f"the child process exited with code {child.returncode} "
        "and wrote no result (a crash?)"}


def _summary(res: dict) -> str:
    tok_s = res.get("output_tok_s")
    return (res["status"]
            + (f", {tok_s:,.1f} output tok/s ({res['output_tokens']} tokens in "
               f"{res['wall_s']:.1f} s; init {res.get('init_s', 0):.1f} s, warm-up "
               f"{res.get('warmup_s', 0):.1f} s)" if tok_s else "")
            + (f"; graphs: {res['cuda_graph_status']}" if res.get("cuda_graph_status") else "")
            + (f"; {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""))


def main(argv=None) -> int:
    ap, args = parse_args(argv)
    if args.sources_hash:
        print(source_info()["sources_sha256"])
        return 0
    if args.child:
        return child_main(args.child)
    if args.build_model_only:
        if not args.model_dir:
            ap.error("--build-model-only needs --model-dir")
        build_model(Path(args.model_dir), args.tiny)
        return 0
    if not args.out:
        ap.error("--out is required")

    t_start = time.perf_counter()
    from folo_edu.bench.machine import resolve_bench_device

    device = resolve_bench_device(args.device)
    if device.type == "cpu" and not args.tiny:
        ap.error("the Qwen3-0.6B shape on a CPU would take hours: use --tiny on a CPU")
    tiny = args.tiny
    names, caps = plan(ap, args)
    settings = engine_settings(args, device)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = new_result(args, argv, settings)

    def save():
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        result["ratios"] = ratios(result["results"], names)
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(out_path)

    signal.signal(signal.SIGTERM, _on_term)
    workdir = Path(tempfile.mkdtemp(prefix="folo_gpu_bench_"))
    grace = GRACE_S if args.isolate == "process" else 0.0
    try:
        result["machine"] = machine(device)
        model_dir = Path(args.model_dir) if args.model_dir else workdir / "model"
        build_model(model_dir, tiny)
        wl = make_workloads(args)
        result["workloads"] = wl["info"]
        workload_path = workdir / "workload.json"
        workload_path.write_text(json.dumps({"requests": wl["requests"]}))
        save()
        deadline = t_start + args.deadline_s
        for k, name in enumerate(names, start=1):
            cfg = CONFIGS[name]
            cap = caps.get(name, TINY_CAP_S if tiny else cfg["cap_s"])
            result["configs"].append({"name": name, **cfg, "cap_s": cap})
            left = deadline - time.perf_counter()
            status, reason = why_not(name, cfg, result["results"], device)
            if not reason and left - grace < (MIN_START_S if not tiny else 3.0):
                status, reason = "skipped", (f"deadline: {left:.0f} s left of "
                                             f"--deadline-s {args.deadline_s:.0f}")
            if reason:
                result["results"][name] = {"status": status, "reason": reason}
                result["skipped"] += [name] if status == "skipped" else []
                log(f"{name}: {status}: {reason}")
                save()
                continue
            budget = min(cap, left - grace)
            spec = {"config": cfg, "name": name, "model_path": str(model_dir),
                    "workload_path": str(workload_path), "device": device.type,
                    "tiny": tiny, "engine_settings": settings,
                    "hf_batch": args.hf_batch, "budget_s": budget,
                    "result_path": str(workdir / f"result_{k}.json")}
            log(f"{name}: start (budget {budget:.0f} s, {left:.0f} s left)")
            spec["hard_end_at"] = time.time() + budget + grace
            if args.isolate == "none":
                res = run_config(spec)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                res = run_in_child(spec, workdir / f"spec_{k}.json", budget + grace + 5)
            result["results"][name] = res
            log(f"{name}: {_summary(res)}")
            save()
        result["finished"] = True
    except (_Terminated, KeyboardInterrupt) as e:
        result["interrupted"] = str(e) or type(e).__name__
        log(f"interrupted ({result['interrupted']}): writing what there is")
    finally:
        save()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(result)
    bad = [n for n, r in result["results"].items() if r["status"] in ("error", "killed")]
    return 1 if bad or not result["finished"] else 0


def print_table(result: dict) -> None:
    from folo_edu.bench.metrics import table

    rows = []
    for c in result["configs"]:
        r = result["results"].get(c["name"], {})
        rows.append([c["name"], r.get("status"), r.get("output_tok_s"), r.get("wall_s"),
                     r.get("requests"), r.get("peak_gpu_mem_gib"),
                     (r.get("cuda_graph_status") or r.get("reason") or r.get("error")
                      or "")[:60]])
    print(table(["config", "status", "tok/s", "wall s", "reqs", "peak GiB", "graphs / note"],
                rows), flush=True)
    for group, entries in result["ratios"].items():
        for name, e in entries.items():
            prefix = (f" (on the same first {e['prefix_output_tokens']} output tokens: "
                      f"{e['prefix_value']})" if "prefix_value" in e else "")
            print(f"  {group}: {name} / {e['of'][1]}: {e['value']}{prefix}", flush=True)
    print(f"[gpu_bench] wrote {result.get('elapsed_s')} s of results; skipped: "
          f"{', '.join(result['skipped']) or 'none'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
