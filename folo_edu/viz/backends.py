"""The CUDA forward pass (M4): attention backends, kernel-launch overhead, CUDA-graph
buckets, and the committed GPU results, as numbers and figures.

Four kinds of functions, kept apart:

* measurements on synthetic tensors: ``synthetic_decode_step`` builds one decode step
  (random queries, a paged cache with shuffled blocks, the real ``AttentionMetadata``),
  and ``max_abs_diff_vs_naive`` and ``measure_decode_latency`` call the backends'
  ``forward`` on it. ``time_per_op`` times one small op at growing sizes.
  ``random_decoder``, ``count_decode_ops`` and ``time_decode_forward`` count and time
  the ops of one decode step of a whole model. ``time_engine_decode`` times engine
  decode steps (the notebook's GPU cells);
* pure arithmetic: ``bucket_of`` and ``padding_rows`` (DecodeGraphRunner's batch-size
  buckets), ``online_softmax_merge`` (one tile of PagedAttention's softmax),
  ``model_step_time`` (kernel launches plus memory traffic);
* ``load_gpu_results`` reads the GPU benchmark JSON files in benchmarks/results/gpu;
* ``plot_*`` functions that only draw.
"""
from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from folo_edu.attention import AttentionMetadata, get_backend
from folo_edu.engine.cuda_graphs import bucket_of, graph_batch_sizes
from folo_edu.bench.machine import synchronize

GPU_RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu"
BACKEND_STYLE = {"naive": ("0.45", "o"), "sdpa": ("C0", "s"), "paged-torch": ("C2", "^"),
                 "flex": ("C3", "v"), "triton": ("C1", "D")}


# ---- one synthetic decode step ---------------------------------------------------------
@dataclass
class DecodeStep:
    """What one attention layer gets in a decode step of B sequences (one query each)."""

    q: torch.Tensor        # [B, H, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]; this step's K/V already in it
    v_cache: torch.Tensor
    meta: AttentionMetadata
    k: torch.Tensor        # [B, KVH, D] this step's keys and values
    v: torch.Tensor
    scale: float

    def forward_args(self) -> tuple:
        """The arguments of ``AttentionBackend.forward``."""
        return self.q, self.k_cache, self.v_cache, self.meta, self.scale, self.k, self.v


def synthetic_decode_step(batch: int, context_len, num_heads: int = 4, num_kv_heads: int = 2,
                          head_dim: int = 32, block_size: int = 16, seed: int = 0,
                          dtype=torch.float32, device="cpu") -> DecodeStep:
    """Random q and a random paged cache whose blocks are shuffled over the pool, as after a
    while in a real engine. context_len: one length for every sequence, or a list of B.
    Each sequence's newest token (position len - 1) is the one decoded."""
    lens = [context_len] * batch if isinstance(context_len, int) else list(context_len)
    if len(lens) != batch or min(lens, default=1) < 1:
        raise ValueError(f"context_len={context_len!r}: expected an int >= 1 or {batch} of them")
    lens.sort()  # the order in which ModelRunner hands decodes to a backend
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    nblocks = [-(-n // block_size) for n in lens]
    ids = list(range(sum(nblocks) + 1))  # one spare block
    rng.shuffle(ids)
    tables, start = [], 0
    for n in nblocks:
        tables.append(ids[start:start + n])
        start += n
    width = max(nblocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device)
    slots = torch.tensor([t[(n - 1) // block_size] * block_size + (n - 1) % block_size
                          for t, n in zip(tables, lens)], device=device)
    shape = (len(ids), block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(device, dtype)
    v_cache = torch.randn(shape, generator=gen).to(device, dtype)
    q = torch.randn(batch, num_heads, head_dim, generator=gen).to(device, dtype)
    k = k_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    v = v_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    meta = AttentionMetadata.build([1] * batch, lens, slots, block_tables, block_size)
    return DecodeStep(q, k_cache, v_cache, meta, k, v, head_dim ** -0.5)


@torch.inference_mode()
def max_abs_diff_vs_naive(step: DecodeStep, names) -> dict[str, float]:
    """The largest |output - naive output| of each backend in ``names`` on ``step``."""
    device = step.q.device
    reference = get_backend("naive", device).forward(*step.forward_args())
    return {name: (get_backend(name, device).forward(*step.forward_args()) - reference)
            .abs().max().item() for name in names}


def _seconds(fn, device="cpu") -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure_decode_latency(names, points, repeats: int = 5, max_call_s: float = 0.2,
                           **shape) -> list[dict]:
    """Time one attention layer's ``forward`` per backend at each (batch, context_len) point.

    Per-step metadata (sdpa's decode groups, flex's block mask) is built in a warm-up call
    outside the timing, as the engine shares it across layers; first calls also pay
    one-off costs (flex traces itself again for new shapes). Then the best of ``repeats``
    calls counts: on a shared machine other jobs only ever add time. Give the points
    smallest first: once one timed call of a backend takes longer than ``max_call_s``, it
    is skipped at that point and every later one. Returns one row per backend and point,
    ``{"backend", "batch", "context", "ms"}``, with ms None and a "note" when skipped.
    """
    rows, slow = [], {}
    for batch, context in points:
        step = synthetic_decode_step(batch, context, **shape)
        device = step.q.device
        for name in names:
            row = {"backend": name, "batch": batch, "context": context, "ms": None}
            if name in slow:
                rows.append(dict(row, note=f"skipped: {slow[name]}"))
                continue
            backend = get_backend(name, device)

            def call():
                backend.forward(*step.forward_args())

            call()  # warm-up
            first = _seconds(call, device)
            if first > max_call_s:
                slow[name] = (f"one call took {first:.2f} s at batch {batch}, context "
                              f"{context} (limit {max_call_s} s)")
                rows.append(dict(row, note=f"skipped: {slow[name]}"))
                continue
            best = min([first] + [_seconds(call, device) for _ in range(repeats - 1)])
            rows.append(dict(row, ms=1e3 * best))
    return rows


def plot_decode_latency(rows, x: str = "batch", ax=None, title: str | None = None):
    """Measured ms per attention call against ``x`` ("batch" or "context"), one line per
    backend (rows from ``measure_decode_latency``; skipped points are left out)."""
    if x not in ("batch", "context"):
        raise ValueError(f"x={x!r}: expected 'batch' or 'context'")
    ax = _new_ax(ax, (6, 3.4))
    fixed = "context" if x == "batch" else "batch"
    for name in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r[x], r["ms"]) for r in rows if r["backend"] == name and r["ms"])
        if pts:
            color, marker = BACKEND_STYLE.get(name, ("C4", "x"))
            ax.plot(*zip(*pts), marker=marker, color=color, label=name)
    fixed_values = ", ".join(str(v) for v in sorted({r[fixed] for r in rows}))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="decode batch size" if x == "batch" else "context length (tokens)",
           ylabel="ms per attention call",
           title=title or f"one layer's decode attention ({fixed} {fixed_values})")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- per-op overhead --------------------------------------------------------------------
def time_per_op(sizes=tuple(4 ** e for e in range(12)), repeats: int = 3,
                target_s: float = 0.005) -> dict:
    """Seconds per call of ``torch.add(a, b, out=c)`` on float32 vectors of each size.

    Each size runs enough back-to-back calls to last about ``target_s``; the best of
    ``repeats`` such loops counts. Returns numpy arrays "elements", "seconds" and
    "bytes" (a and b read, c written).
    """
    seconds = []
    for n in sizes:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        torch.add(a, b, out=c)  # warm-up
        one = _seconds(lambda: torch.add(a, b, out=c))
        calls = int(min(1000, max(3, target_s / max(one, 1e-7))))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.add(a, b, out=c)
            best = min(best, (time.perf_counter() - t0) / calls)
        seconds.append(best)
    elements = np.array(sizes, dtype=np.int64)
    return {"elements": elements, "seconds": np.array(seconds), "bytes": 12 * elements}


def per_op_overhead(result: dict, max_elements: int = 1024) -> float:
    """The cost of one call when there is almost no work: the median seconds per call of
    the sizes up to ``max_elements`` in a ``time_per_op`` result."""
    small = result["seconds"][result["elements"] <= max_elements]
    if small.size == 0:
        raise ValueError(f"no size <= {max_elements} elements in the result")
    return float(np.median(small))


def plot_time_per_op(result: dict, ax=None, title: str | None = None):
    """Microseconds per call against elements, log-log, with the per-call floor and the
    memory-bandwidth line of the largest size. Returns the Figure."""
    ax = _new_ax(ax, (6.5, 3.4))
    n, s = result["elements"], result["seconds"]
    floor = per_op_overhead(result)
    bandwidth = result["bytes"][-1] / s[-1]  # bytes per second at the largest size
    ax.loglog(n, 1e6 * s, "o-", color="C0", label="measured: torch.add, one call")
    ax.axhline(1e6 * floor, color="C3", ls="--", lw=1,
               label=f"per-call overhead, about {1e6 * floor:.1f} µs")
    ax.loglog(n, 1e6 * result["bytes"] / bandwidth, ":", color="0.4",
              label=f"bytes / {bandwidth / 1e9:.1f} GB/s (the largest size's rate)")
    ax.set(xlabel="elements per tensor (float32)", ylabel="µs per call",
           title=title or "one small op: the fixed cost per call dominates")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- counting the ops of one decode step --------------------------------------------------
class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run inside it: roughly the kernels an eager GPU run launches.

    Views (no data touched), allocations (``empty*``) and dtype arithmetic launch no
    kernel and are left out. ``item`` (``.item()``, ``int(tensor)``) is counted apart, as
    a host sync: on a GPU the CPU stops there until the device has caught up.
    """

    NO_KERNEL = ("aten::empty", "aten::promote_types", "aten::result_type")
    SYNC = ("aten::item", "aten::_local_scalar_dense")

    def __init__(self):
        super().__init__()
        self.kernels: Counter = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith(self.SYNC):
            self.syncs += 1
        elif not func.is_view and not name.startswith(self.NO_KERNEL):
            self.kernels[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def launch(self, name: str) -> None:
        """Record one kernel launch that does not go through aten (a Triton kernel)."""
        self.kernels[name] += 1


def random_decoder(name: str = "qwen3-odd-headdim", backend: str = "sdpa", seed: int = 0,
                   device="cpu", **overrides):
    """A DecoderModel with random weights for one of ``models.tiny.TINY_CONFIGS`` (config
    overrides such as num_hidden_layers=28 win), built in memory: no checkpoint."""
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config

    torch.manual_seed(seed)
    model = DecoderModel(DecoderSpec(tiny_hf_config(name, **overrides)),
                         get_backend(backend, device)).to(device)
    model.init_rotary(device)
    return model.eval()


def set_backend(model, name: str) -> None:
    """Make every attention layer of ``model`` use attention backend ``name``."""
    backend = get_backend(name, next(model.parameters()).device)
    for layer in model.layers:
        layer.self_attn.backend = backend


def decode_inputs(model, batch: int, context_len: int, block_size: int = 16, seed: int = 0):
    """Give ``model`` a paged cache of random K/V and return (input_ids, positions, meta) of
    one decode step of ``batch`` sequences of ``context_len`` tokens (the last one new)."""
    from folo_edu.kv_cache.storage import allocate_kv_cache

    spec, param = model.spec, next(model.parameters())
    nb = -(-context_len // block_size)
    cache = allocate_kv_cache(spec.num_layers, batch * nb, block_size, spec.num_kv_heads,
                              spec.head_dim, param.dtype, param.device)
    cache.normal_(generator=torch.Generator(param.device).manual_seed(seed))
    for i, layer in enumerate(model.layers):
        layer.self_attn.k_cache, layer.self_attn.v_cache = cache[0, i], cache[1, i]
    tables = torch.arange(batch * nb, device=param.device).view(batch, nb)
    last = context_len - 1
    slots = tables[:, last // block_size] * block_size + last % block_size
    ids = torch.randint(3, spec.vocab_size, (batch,),
                        generator=torch.Generator().manual_seed(seed)).to(param.device)
    positions = torch.full((batch,), last, device=param.device)
    return ids, positions, AttentionMetadata.build([1] * batch, [context_len] * batch, slots,
                                                   tables, block_size)


@torch.inference_mode()
def count_decode_ops(model, batch: int, context_len: int, block_size: int = 16) -> dict:
    """Kernels and host syncs of one decode step of ``model`` (its current backend).

    Returns ``{"kernels": total, "syncs": n, "by_op": Counter}``. A Triton backend's kernels
    do not go through aten (on a CPU they run in the interpreter), so for it each
    ``store_kv`` and ``paged_decode_attention`` call is counted as the one launch it is
    on a GPU, without running it.
    """
    ids, positions, meta = decode_inputs(model, batch, context_len, block_size)
    counter = OpCounter()
    backend = model.layers[0].self_attn.backend
    swap = backend.name == "triton"
    if swap:
        class FakeKernels:  # one recorded launch per call, nothing run
            @staticmethod
            def store_kv(*args):
                counter.launch("triton:store_kv")

            @staticmethod
            def paged_decode_attention(q, *args):
                counter.launch("triton:paged_decode_attention")
                return torch.empty_like(q)

        real, backend.kernels = backend.kernels, FakeKernels
    try:
        with counter:
            model(ids, positions, meta)
    finally:
        if swap:
            backend.kernels = real
    return {"kernels": sum(counter.kernels.values()), "syncs": counter.syncs,
            "by_op": counter.kernels}


@torch.inference_mode()
def time_decode_forward(model, batch: int, context_len: int, repeats: int = 3,
                        block_size: int = 16) -> float:
    """Seconds (best of ``repeats`` after a warm-up) of one decode-step forward of ``model``."""
    ids, positions, meta = decode_inputs(model, batch, context_len, block_size)
    device = ids.device
    _seconds(lambda: model(ids, positions, meta), device)
    return min(_seconds(lambda: model(ids, positions, meta), device) for _ in range(repeats))


def plot_op_counts(counts: dict, ax=None, title: str | None = None):
    """Kernels per decode step against batch size, one line per backend.

    counts: ``{backend: {batch: count_decode_ops result}}``. Returns the Figure."""
    ax = _new_ax(ax, (6.5, 3.4))
    for name, by_batch in counts.items():
        batches = sorted(by_batch)
        color, marker = BACKEND_STYLE.get(name, ("C4", "x"))
        ax.plot(batches, [by_batch[b]["kernels"] for b in batches], marker=marker,
                color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, None)
    ax.set(xlabel="decode batch size", ylabel="kernels launched per step",
           title=title or "ops in one decode step (eager): each one a kernel launch on a GPU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- a model of a GPU decode step --------------------------------------------------------
def model_step_time(batch_sizes, n_kernels: int, launch_s: float, weight_bytes: float,
                    kv_bytes_per_token: float, context_len: int, bandwidth: float) -> dict:
    """Decode step time on a GPU, modelled: launches plus memory traffic.

    work(B) = (weights + B x context_len x KV bytes per token) / bandwidth: every weight
    and every cached key/value read once at the full bandwidth (an optimistic floor).
    eager = n_kernels x launch_s + work: each kernel launched from the host.
    graphs = launch_s + work: one launch replays the captured graph.
    Returns numpy arrays "batch", "work", "eager", "graphs" (seconds).
    """
    b = np.asarray(batch_sizes, dtype=float)
    work = (weight_bytes + b * context_len * kv_bytes_per_token) / bandwidth
    return {"batch": b, "work": work, "eager": n_kernels * launch_s + work,
            "graphs": launch_s + work}


def plot_step_time_model(result: dict, ax=None, title: str | None = None):
    """The modelled eager and CUDA-graph step times against batch size. Returns the Figure."""
    ax = _new_ax(ax, (6.5, 3.6))
    b = result["batch"]
    ax.plot(b, 1e3 * result["eager"], "o-", color="C3", label="eager: launches + work")
    ax.plot(b, 1e3 * result["graphs"], "s-", color="C0", label="CUDA graph: 1 launch + work")
    ax.plot(b, 1e3 * result["work"], ":", color="0.4", label="work alone (memory traffic)")
    for i in (0, len(b) - 1):
        ratio = result["eager"][i] / result["graphs"][i]
        ax.annotate(f"{ratio:.1f}x", (b[i], 1e3 * result["eager"][i]), fontsize=8,
                    xytext=(0, 6), textcoords="offset points", ha="center")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="decode batch size", ylabel="ms per decode step",
           title=title or "a GPU decode step, modelled")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- CUDA-graph buckets and one online-softmax step -----------------------------------------
def padding_rows(n: int, sizes) -> int:
    """The rows a batch of ``n`` is padded with to fill its bucket."""
    return bucket_of(n, sizes) - n


def plot_bucket_padding(max_batch: int = 64, ax=None, title: str | None = None):
    """Padding rows for every batch size 1..max_batch in ``graph_batch_sizes(max_batch)``
    buckets, and the share of each bucket they fill. Returns the Figure."""
    ax = _new_ax(ax, (8, 3.2))
    sizes = graph_batch_sizes(max_batch)
    n = np.arange(1, max_batch + 1)
    pad = np.array([padding_rows(int(i), sizes) for i in n])
    bucket = n + pad
    colors = [f"C{sizes.index(int(b)) % 10}" for b in bucket]
    ax.bar(n, pad, color=colors, width=0.85)
    ax.set(xlabel="decode batch size (running requests)", ylabel="padding rows",
           xlim=(0.3, max_batch + 0.7),
           title=title or f"CUDA-graph buckets {sizes}: padding per batch size")
    for s in sizes:
        ax.axvline(s + 0.5, color="0.7", lw=0.6, zorder=0)
    ax2 = ax.twinx()
    ax2.plot(n, 100 * pad / bucket, color="0.2", lw=1, label="padding share of the bucket")
    ax2.set(ylabel="padding share (%)", ylim=(0, 100))
    ax2.legend(fontsize=7, loc="upper right")
    return ax.figure


def online_softmax_merge(m: float, l: float, scores) -> tuple[float, float]:
    """Fold one tile of scores into a running softmax: (running max m, running sum l of
    exp(score - m)) -> (new max, new sum). Start from m = -inf, l = 0."""
    scores = [float(s) for s in scores]
    m_new = max([m, *scores])
    return m_new, l * math.exp(m - m_new) + sum(math.exp(s - m_new) for s in scores)


# ---- engine decode steps (the GPU cells) -----------------------------------------------------
def time_engine_decode(engine, batch: int, steps: int = 10, prompt_len: int = 8,
                       seed: int = 0) -> dict:
    """Median milliseconds of an engine step in which ``batch`` requests all decode.

    Adds ``batch`` requests of random ``prompt_len``-token prompts, runs their prefill
    steps, skips one decode step (warm-up), times the next ``steps``, then runs the
    requests to their end. The engine must have no other requests.
    """
    from folo_edu import SamplingParams

    max_seqs = engine.config.scheduler_config.max_num_seqs
    if not 1 <= batch <= max_seqs or prompt_len < 2 or engine.has_unfinished_requests():
        raise ValueError(f"batch={batch}, prompt_len={prompt_len}: expected 1 <= batch <= "
                         f"max_num_seqs={max_seqs}, prompt_len >= 2 and an idle engine")
    rng = random.Random(seed)
    vocab = engine.model_runner.model.spec.vocab_size
    params = SamplingParams(temperature=0, max_tokens=steps + 4, ignore_eos=True)
    for i in range(batch):
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        engine.add_request(f"decode-timing-{seed}-{i}", {"prompt_token_ids": prompt}, params)
    device, times, warm = engine.model_runner.device, [], False
    while len(times) < steps and engine.has_unfinished_requests():
        seconds = _seconds(engine.step, device)
        if engine.get_stats()["num_batched_tokens_last_step"] == batch:  # decodes only
            if warm:
                times.append(seconds)
            warm = True
    while engine.has_unfinished_requests():  # the few tokens left: leave the engine idle
        engine.step()
    if len(times) < steps:
        raise RuntimeError(f"only {len(times)} of {steps} steps had all {batch} requests "
                           "decoding (too few KV blocks?)")
    return {"batch": batch, "ms_per_step": 1e3 * statistics.median(times), "steps": steps,
            "cuda_graph_status": engine.model_runner.cuda_graph_status}


def plot_engine_decode(rows, ax=None, title: str | None = None):
    """ms per decode step against batch size, one line per row["config"]. Returns the Figure."""
    ax = _new_ax(ax, (6.5, 3.4))
    for i, config in enumerate(dict.fromkeys(r["config"] for r in rows)):
        mine = sorted((r["batch"], r["ms_per_step"]) for r in rows if r["config"] == config)
        ax.plot(*zip(*mine), "o-", color=f"C{i}", label=config)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="decode batch size", ylabel="ms per engine step",
           title=title or "decode step time, measured")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure


# ---- committed GPU results ---------------------------------------------------------------
def load_gpu_results(folder=None) -> list[dict]:
    """One row per folo_edu/transformers configuration in the GPU benchmark JSON files.

    Reads both formats in ``benchmarks/results/gpu``: the M2-era files
    (``{"folo_edu": {backend: {...}}}``, the date taken from the folder's README.md title)
    and scripts/gpu_bench.py's M4 matrix (``{"results": {name: {...}}}``). Rows:
    ``{"file", "device", "date", "config", "requests", "output_tok_s", "status"}``;
    output_tok_s is None unless the run finished ("ok"). A missing folder gives [].
    """
    folder = Path(folder) if folder is not None else GPU_RESULTS_DIR
    if not folder.is_dir():
        return []
    readme = folder / "README.md"
    found = re.search(r"\d{4}-\d{2}-\d{2}", readme.read_text().splitlines()[0]
                      if readme.is_file() else "")
    readme_date = found.group(0) if found else None
    rows = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        machine = data.get("machine") or {}
        device = (machine.get("gpu_name") or (machine.get("gpu") or {}).get("name")
                  or machine.get("device") or "?")
        if "results" in data:  # scripts/gpu_bench.py (M4)
            workloads = data.get("workloads") or {}
            cfgs = {c["name"]: c for c in data.get("configs", [])}
            for name, res in data["results"].items():
                wl = workloads.get(cfgs.get(name, {}).get("workload"), {})
                ok = res.get("status") == "ok"
                rows.append({"file": path.name, "device": device,
                             "date": (data.get("created") or "")[:10] or None,
                             "config": name + (" (tiny)" if data.get("mode") == "tiny" else ""),
                             "requests": wl.get("num_requests"), "status": res.get("status"),
                             "output_tok_s": res.get("output_tok_s") if ok else None})
        elif "folo_edu" in data:  # the M2-era files
            for backend, res in data["folo_edu"].items():
                rows.append({"file": path.name, "device": device, "date": readme_date,
                             "config": f"{backend}-eager (M2 engine)",
                             "requests": data.get("requests"), "status": "ok",
                             "output_tok_s": res.get("output_tok_s")})
    return rows


def plot_gpu_results(rows, ax=None, title: str | None = None):
    """Horizontal bars of output tokens/s per configuration, labelled with the GPU and
    date of each run; configurations that did not finish are listed, not drawn."""
    done = [r for r in rows if r["output_tok_s"]]
    ax = _new_ax(ax, (7, 0.45 * len(done) + 1.4))
    labels = [f"{r['config']}, {r['requests']} req\n{r['device']}, {r['date'] or 'date ?'}"
              for r in done]
    y = np.arange(len(done))
    bars = ax.barh(y, [r["output_tok_s"] for r in done], color="C0")
    for bar, r in zip(bars, done):
        ax.annotate(f"{r['output_tok_s']:,.0f}", (bar.get_width(), bar.get_y() + 0.4),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="output tokens / s (one timed run each)",
           title=title or "committed GPU results (benchmarks/results/gpu)")
    not_done = [f"{r['config']}: {r['status']}" for r in rows if not r["output_tok_s"]]
    if not_done:
        ax.text(0.99, 0.02, "not finished: " + "; ".join(not_done), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=6, color="0.4", wrap=True)
    return ax.figure


# ---- shared -------------------------------------------------------------------------------
def _new_ax(ax, figsize):
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()
