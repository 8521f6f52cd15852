"""Figures for notebook 09 (GPTQ quantization): plain-data helpers and plots.

    group_error           mean |W - W_hat| of each group of input columns (one number per group)
    plot_weight_histograms  a weight matrix's values before and after quantization
    plot_group_error      group_error of one or more quantized versions, side by side
    plot_output_error     relative output error per calibration token, one line per method
    sweep_rows            m7_gptq_cpu.json -> rows (method, bits, group, perplexity, bytes)
    plot_ppl_vs_bits      perplexity against bits, RTN and GPTQ, fp32 as a line
    plot_memory_vs_bits   bytes of the quantized layers against bits (packed and serving)
"""
from __future__ import annotations

import torch

from folo_edu.viz._plot import new_ax

METHOD_STYLE = {"rtn": ("C1", "o"), "gptq": ("C0", "s"), "fp32": ("0.3", "")}


def group_error(w: torch.Tensor, w_hat: torch.Tensor, g_idx: torch.Tensor) -> list[float]:
    """Mean absolute error of every group of input columns: w, w_hat [out, in], g_idx [in]."""
    err = (w.double() - w_hat.double()).abs()
    g = g_idx.long()
    return [err[:, g == k].mean().item() for k in range(int(g.max()) + 1)]


def plot_weight_histograms(w: torch.Tensor, w_hat: torch.Tensor, title: str = "", ax=None,
                           bins: int = 200):
    """Histograms of the weights before (filled) and after (lines: the grid's levels)."""
    ax = new_ax(ax)
    lo, hi = torch.quantile(w.flatten()[:1_000_000].double(),
                            torch.tensor([0.0005, 0.9995], dtype=torch.float64)).tolist()
    edges = torch.linspace(lo, hi, bins + 1).numpy()
    ax.hist(w.flatten().double().numpy(), bins=edges, color="0.75", label="float32")
    ax.hist(w_hat.flatten().double().numpy(), bins=edges, histtype="step", color="C0",
            label="quantized")
    ax.set_yscale("log")
    ax.set_xlabel("weight value (0.05% tails cut)")
    ax.set_ylabel("count")
    ax.legend(frameon=False)
    ax.set_title(title, fontsize=10)
    return ax.figure


def plot_group_error(errors: dict[str, list[float]], title: str = "", ax=None):
    """errors: {label: [mean |error| per group]}, bars side by side per group."""
    ax = new_ax(ax)
    n = len(errors)
    for i, (label, errs) in enumerate(errors.items()):
        xs = [k + (i - (n - 1) / 2) * 0.8 / n for k in range(len(errs))]
        ax.bar(xs, errs, width=0.8 / n, label=label)
    ax.set_xlabel("group of input columns")
    ax.set_ylabel("mean |W - W_hat|")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax.figure


def plot_output_error(errors: dict[str, torch.Tensor], title: str = "", ax=None):
    """errors: {method: relative output error per token [tokens]}, sorted per method."""
    ax = new_ax(ax)
    for label, e in errors.items():
        color, _ = METHOD_STYLE.get(label.split()[0].lower(), ("C2", ""))
        ax.plot(torch.sort(e.double()).values.numpy(), label=f"{label} (mean {e.mean():.3f})",
                color=color)
    ax.set_xlabel("calibration tokens, sorted by error")
    ax.set_ylabel("|XW_hatᵀ - XWᵀ| / |XWᵀ|")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax.figure


def sweep_rows(result: dict) -> list[dict]:
    """The runs of m7_gptq_cpu.json as flat rows; runs with an error are left out."""
    rows = []
    for name, r in result.get("runs", {}).items():
        if "perplexity" not in r:
            continue
        rows.append({"name": name, "method": r["method"], "bits": r.get("bits", 32),
                     "group_size": r.get("group_size"), "desc_act": r.get("desc_act", False),
                     "perplexity": r["perplexity"], "serving_bytes": r.get("serving_bytes"),
                     "packed_bytes": r.get("packed_bytes"),
                     "fp32_bytes": r.get("fp32_bytes")})
    return rows


def plot_ppl_vs_bits(rows: list[dict], title: str = "", ax=None, group_size: int = 128,
                     live: dict | None = None):
    """Perplexity against bits for RTN and GPTQ at ``group_size`` (log scale), the fp32
    model as a horizontal line; ``live``: {label: (bits, ppl)} extra points."""
    ax = new_ax(ax)
    fp = [r["perplexity"] for r in rows if r["method"] == "fp32"]
    if fp:
        ax.axhline(fp[0], color="0.3", ls="--", lw=1, label=f"fp32 ({fp[0]:.2f})")
    for method in ("rtn", "gptq"):
        pts = sorted((r["bits"], r["perplexity"]) for r in rows if r["method"] == method
                     and r["group_size"] == group_size and not r["desc_act"])
        if pts:
            color, marker = METHOD_STYLE[method]
            ax.plot(*zip(*pts), marker=marker, color=color, label=f"{method.upper()} "
                    f"g{group_size}")
    for label, (bits, ppl) in (live or {}).items():
        ax.plot([bits], [ppl], marker="*", ms=12, ls="", label=label)
    ax.set_yscale("log")
    ax.set_xticks([2, 3, 4, 8])
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("perplexity (log)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax.figure


def plot_memory_vs_bits(rows: list[dict], title: str = "", ax=None, group_size: int = 128):
    """MiB of the quantized layers against bits: packed (the checkpoint's tensors) and
    serving (as held in memory: the reference path adds a float32 copy)."""
    ax = new_ax(ax)
    pts = sorted((r["bits"], r["packed_bytes"], r["serving_bytes"]) for r in rows
                 if r["method"] == "gptq" and r["group_size"] == group_size
                 and not r["desc_act"] and r["packed_bytes"])
    fp32 = next((r["fp32_bytes"] for r in rows if r["fp32_bytes"]), None)
    if pts:
        bits, packed, serving = zip(*pts)
        ax.plot(bits, [p / 2**20 for p in packed], marker="s", label="packed (checkpoint)")
        ax.plot(bits, [s / 2**20 for s in serving], marker="o",
                label="while serving on CPU (4 bits: int4-cpu)")
    if fp32:
        ax.axhline(fp32 / 2**20, color="0.3", ls="--", lw=1, label="float32")
    ax.set_xticks([2, 3, 4, 8])
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("MiB of the quantized layers")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax.figure


class _Stop(Exception):
    pass


def layer_inputs(model, layer_index: int, name: str, samples) -> torch.Tensor:
    """The inputs [tokens, in] that linear map ``name`` (e.g. "self_attn.qkv_proj") of
    decoder layer ``layer_index`` of a DecoderModel sees on ``samples`` (token-id tensors),
    with every earlier layer in float: the data GPTQ calibrates that map on."""
    from folo_edu.quantization.calibrate import layer_forward

    layer = model.layers[layer_index]
    module = layer.get_submodule(name)
    seen = []

    def grab(_module, args):
        seen.append(args[0].reshape(-1, module.in_features).detach().clone())
        raise _Stop

    dtype = next(model.parameters()).dtype
    handle = module.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for ids in samples:
                x = model.embed_tokens(ids)
                cs = model.rotary.lookup(torch.arange(len(ids)), dtype)
                for earlier in model.layers[:layer_index]:
                    x = layer_forward(earlier, x, cs)
                try:
                    layer_forward(layer, x, cs)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(seen)
