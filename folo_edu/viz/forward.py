"""Forward pass and KV cache (M1): run one sequence through a model, time it, draw it.

Measurement helpers return plain numbers; the ``plot_*`` functions only draw them.

- ``private_kv_cache`` gives a model its own contiguous cache (one block per sequence,
  the way systems before vLLM did) and puts the engine's cache back afterwards, so a
  notebook can run a loaded ``LLM``'s model by hand without touching its requests.
- ``next_token_logits`` runs one prompt through the model: the logits the Sampler sees;
  ``layer_forward`` runs one decoder layer alone.
- ``measure_kv_cache_speedup`` times producing one token at growing context lengths,
  with the cache (one decode step) and without it (recompute the whole sequence).
- ``time_engine_steps`` times each ``LLMEngine.step`` of one request: prefill, then decodes.
- ``kv_bytes_per_token`` of published configs, with and without grouped-query attention.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from folo_edu.attention.metadata import AttentionMetadata
from folo_edu.viz.memory import kv_bytes_per_token
from folo_edu.viz._plot import new_ax, seconds


# ---- running one sequence by hand -------------------------------------------------------
@contextmanager
def private_kv_cache(model, max_tokens: int):
    """Give every attention layer of ``model`` a contiguous K/V cache for one sequence.

    The cache is one block of ``max_tokens`` slots per layer. Yields the cache tensor
    ``[2, layers, 1, max_tokens, KVH, D]``; the layers' previous caches come back on exit.
    """
    spec = model.spec
    param = next(model.parameters())
    cache = torch.zeros(2, spec.num_layers, 1, max_tokens, spec.num_kv_heads, spec.head_dim,
                        dtype=param.dtype, device=param.device)
    saved = [(layer.self_attn.k_cache, layer.self_attn.v_cache) for layer in model.layers]
    try:
        for i, layer in enumerate(model.layers):
            layer.self_attn.k_cache, layer.self_attn.v_cache = cache[0, i], cache[1, i]
        yield cache
    finally:
        for layer, (k, v) in zip(model.layers, saved):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k, v


def sequence_metadata(start: int, end: int, block_size: int, device="cpu") -> AttentionMetadata:
    """Metadata for one sequence computing positions [start, end) in a one-block cache.

    ``start == 0`` is a prefill of ``end`` tokens; ``end == start + 1`` is a decode step
    that reads the ``start`` cached tokens back.
    """
    if not 0 <= start < end <= block_size:
        raise ValueError(f"start={start}, end={end}: expected 0 <= start < end <= "
                         f"block_size={block_size}")
    slots = torch.arange(start, end, device=device)  # block 0, offset = position
    return AttentionMetadata.build([end - start], [end], slots,
                                   torch.zeros(1, 1, dtype=torch.long, device=device),
                                   block_size)


def forward_positions(model, token_ids, start: int, block_size: int) -> torch.Tensor:
    """Run ``token_ids`` at positions start.. through ``model``; return hidden states [T, H].

    The model must have a one-block cache of ``block_size`` slots attached (see
    ``private_kv_cache``) holding the K/V of positions < start.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
    end = start + ids.numel()
    positions = torch.arange(start, end, device=device)
    return model(ids, positions, sequence_metadata(start, end, block_size, device))


@torch.inference_mode()
def layer_forward(model, layer_index: int, x: torch.Tensor, positions) -> torch.Tensor:
    """Run decoder layer ``layer_index`` of ``model`` alone on hidden states x [T, hidden].

    The tokens are one sequence at ``positions`` (a prefill: nothing cached before), in a
    private cache; RoPE's cos/sin are looked up once, as ``DecoderModel.forward`` does.
    """
    positions = torch.as_tensor(positions, dtype=torch.long, device=x.device)
    n = positions.numel()
    with private_kv_cache(model, n):
        meta = sequence_metadata(0, n, n, x.device)
        return model.layers[layer_index](x, meta, model.rotary.lookup(positions, x.dtype))


@torch.inference_mode()
def next_token_logits(model, token_ids: list[int]) -> torch.Tensor:
    """The logits [V] for the token after ``token_ids``: exactly what the Sampler gets.

    Works on the model of a loaded engine (``llm.llm_engine.model_runner.model``): it runs in a
    private cache, so the engine's own cache and requests are untouched.
    """
    if len(token_ids) == 0:
        raise ValueError("token_ids is empty; expected at least one token")
    with private_kv_cache(model, len(token_ids)):
        hidden = forward_positions(model, token_ids, 0, len(token_ids))
        return model.compute_logits(hidden[-1:])[0]


# ---- with and without the KV cache --------------------------------------------------------
def _best_seconds(fn, repeats: int, device="cpu") -> float:
    """The fastest of ``repeats`` timed calls, after one warm-up call.

    The minimum, not the mean: on a shared machine other jobs only ever add time, so
    the fastest run is the best estimate of what the computation itself costs.
    """
    fn()  # warm-up: first calls allocate and pick kernels
    return min(seconds(fn, device) for _ in range(repeats))


@torch.inference_mode()
def time_next_token(model, context_len: int, use_cache: bool, repeats: int = 3,
                    seed: int = 0, all_runs: bool = False):
    """Seconds (best of ``repeats``; every run, a list, with all_runs=True) to get the
    logits of token ``context_len + 1``.

    use_cache=True: the K/V of the first ``context_len - 1`` tokens are already in the
    cache (computed once, not timed); one decode step computes the newest token.
    use_cache=False: the whole ``context_len``-token sequence is recomputed from scratch,
    which is what generating without a KV cache does at every step.
    Both include the final norm and LM head for the last position.
    """
    if context_len < 2:
        raise ValueError(f"context_len={context_len}: expected >= 2")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.spec.vocab_size, (context_len,), generator=g).tolist()
    with private_kv_cache(model, context_len):
        if use_cache:
            forward_positions(model, ids[:-1], 0, context_len)  # prefill, not timed

            def step():
                hidden = forward_positions(model, ids[-1:], context_len - 1, context_len)
                return model.compute_logits(hidden)
        else:
            def step():
                hidden = forward_positions(model, ids, 0, context_len)
                return model.compute_logits(hidden[-1:])
        device = next(model.parameters()).device
        if all_runs:
            step()  # warm-up
            return [seconds(step, device) for _ in range(repeats)]
        return _best_seconds(step, repeats, device)


def measure_kv_cache_speedup(model, context_lens, repeats: int = 5,
                             threads: int | None = 1) -> dict:
    """Time one new token with and without the KV cache at each context length.

    Returns numpy arrays (seconds) under "context", "with_cache" and "without_cache" (the
    median of ``repeats`` runs), and every run under "with_cache_runs" and
    "without_cache_runs" ([contexts, repeats]). The two are timed alternately, run by
    run, so that a burst of load from other jobs hits both. ``threads``: torch threads
    during the timing (restored afterwards); one by default, because on a busy machine a
    second thread mostly waits for a core, which makes small steps slow and noisy.
    """
    context = [int(c) for c in context_lens]
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        runs = {True: [], False: []}
        for c in context:
            for use_cache in runs:
                runs[use_cache].append([])
            for _ in range(repeats):
                for use_cache in runs:
                    runs[use_cache][-1] += time_next_token(model, c, use_cache, 1,
                                                           all_runs=True)
    finally:
        torch.set_num_threads(saved)
    with_runs, without_runs = np.array(runs[True]), np.array(runs[False])
    return {"context": np.array(context), "with_cache": np.median(with_runs, axis=1),
            "without_cache": np.median(without_runs, axis=1),
            "with_cache_runs": with_runs, "without_cache_runs": without_runs}


def plot_kv_cache_speedup(result: dict, title: str = "", ax=None):
    """Milliseconds per generated token against context length, with and without cache."""
    ax = new_ax(ax, (7, 4))
    ctx = result["context"]
    ax.plot(ctx, result["without_cache"] * 1e3, "o-", color="C3",
            label="without KV cache (recompute all tokens each step)")
    ax.plot(ctx, result["with_cache"] * 1e3, "o-", color="C0",
            label="with KV cache (one decode step)")
    for name, color in (("without_cache_runs", "C3"), ("with_cache_runs", "C0")):
        if name in result:  # every run, faint: how much the machine's noise spreads them
            runs = result[name]
            ax.plot(np.repeat(ctx, runs.shape[1]), runs.ravel() * 1e3, ".", color=color,
                    alpha=0.3, markersize=4)
    ratio = result["without_cache"][-1] / result["with_cache"][-1]
    ax.annotate(f"{ratio:.0f}x", (ctx[-1], result["without_cache"][-1] * 1e3),
                textcoords="offset points", xytext=(-30, -4), ha="right")
    ax.set(xlabel="tokens already in the sequence",
           ylabel="ms per new token (line: median; dots: each run)",
           title=title or "Time to produce one more token, measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return ax.figure


# ---- one request through the engine, step by step -----------------------------------------
def time_engine_steps(engine, prompt, params, request_id: str = "timed") -> list[dict]:
    """Run one request alone through ``engine``; time every ``step()``.

    Returns one dict per step: "step", "kind" ("prefill" or "decode"), "tokens" (tokens
    computed) and "seconds". The engine must have no other unfinished request.
    """
    if engine.has_unfinished_requests():
        raise ValueError("the engine has unfinished requests; expected an idle engine so "
                         "that every step times this request alone")
    engine.add_request(request_id, prompt, params)
    steps = []
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        took = time.perf_counter() - t0
        for rid, tokens, kind in engine.last_step:
            if rid.split("#")[0] == request_id:
                steps.append({"step": len(steps), "kind": kind, "tokens": tokens,
                              "seconds": took})
                break
    return steps


def plot_step_times(steps: list[dict], title: str = "", ax=None):
    """Bars of milliseconds per engine step: the prefill (time to first token) in orange,
    then one bar per decoded token."""
    from matplotlib.patches import Patch

    ax = new_ax(ax, (7, 3.5))
    ms = [s["seconds"] * 1e3 for s in steps]
    colors = ["C1" if s["kind"] == "prefill" else "C0" for s in steps]
    ax.bar(range(len(steps)), ms, color=colors)
    decode = [m for m, s in zip(ms, steps) if s["kind"] == "decode"]
    if decode:
        med = statistics.median(decode)
        ax.axhline(med, color="C0", linestyle="--", linewidth=1,
                   label=f"decode median {med:.1f} ms ({1e3 / med:.0f} tokens/s)")
    prefill = [s for s in steps if s["kind"] == "prefill"]
    handles = ax.get_legend_handles_labels()[0]
    if prefill:
        handles.append(Patch(color="C1", label=f"prefill: {sum(s['tokens'] for s in prefill)}"
                             " prompt tokens (time to first token)"))
    ax.set(xlabel="engine step (0 = prefill, then one token per step)", ylabel="ms",
           title=title or "Time per engine step, measured")
    ax.legend(handles=handles, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return ax.figure


# ---- KV bytes per token ---------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionShape:
    """The attention shape of a checkpoint: what decides its KV bytes per token."""

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    bytes_per_elem: int = 2

    def kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim,
                                  self.bytes_per_elem)

    def mha_kv_bytes_per_token(self) -> int:
        """What the cache would take if every query head had its own K/V (no GQA)."""
        return kv_bytes_per_token(self.num_layers, self.num_heads, self.head_dim,
                                  self.bytes_per_elem)


# Published config.json values (Hugging Face model cards), all in bf16 (2 bytes):
#   HuggingFaceTB/SmolLM2-135M  30 layers  9 heads  3 KV heads head_dim 64
#   Qwen/Qwen3-0.6B             28 layers 16 heads  8 KV heads head_dim 128
#   meta-llama/Llama-2-7b-hf    32 layers 32 heads 32 KV heads head_dim 128 (MHA)
#   meta-llama/Meta-Llama-3-8B  32 layers 32 heads  8 KV heads head_dim 128
#   meta-llama/Meta-Llama-3-70B 80 layers 64 heads  8 KV heads head_dim 128
PUBLISHED_SHAPES = [
    AttentionShape("SmolLM2-135M", 30, 9, 3, 64),
    AttentionShape("Qwen3-0.6B", 28, 16, 8, 128),
    AttentionShape("Llama-2-7B", 32, 32, 32, 128),
    AttentionShape("Llama-3-8B", 32, 32, 8, 128),
    AttentionShape("Llama-3-70B", 80, 64, 8, 128),
]


def plot_kv_bytes_per_token(shapes: list[AttentionShape], ax=None):
    """KiB of KV cache per token for each shape (log scale), with the multi-head
    attention equivalent (every query head cached) as a hollow bar behind it."""
    ax = new_ax(ax, (8, 4))
    x = np.arange(len(shapes))
    actual = np.array([s.kv_bytes_per_token() for s in shapes]) / 1024
    mha = np.array([s.mha_kv_bytes_per_token() for s in shapes]) / 1024
    ax.bar(x, mha, width=0.7, fill=False, edgecolor="C7", hatch="//",
           label="if every query head were cached (MHA)")
    bars = ax.bar(x, actual, width=0.5, color="C0", label="KV heads only (as configured)")
    for bar, kib, s in zip(bars, actual, shapes):
        ax.annotate(f"{kib:g} KiB\n{s.num_heads}/{s.num_kv_heads} heads",
                    (bar.get_x() + bar.get_width() / 2, kib), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(x, [f"{s.name}\n({s.bytes_per_elem * 8}-bit)" for s in shapes], fontsize=8)
    ax.set(ylabel="KiB per token (log scale)", yscale="log",
           title="KV cache per token = 2 x layers x KV heads x head_dim x bytes")
    ax.set_ylim(top=ax.get_ylim()[1] * 3)
    ax.legend(fontsize=8, loc="upper left")
    return ax.figure
