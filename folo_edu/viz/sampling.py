"""Sampling (M1): what each logits processor does to the next-token distribution.

``sampler_stages`` runs one row of logits through the processors of
``folo_edu.sample`` in the Sampler's order and returns every intermediate result;
the ``plot_*`` functions only draw; ``sampling_explorer`` is a thin ipywidgets wrapper
around ``plot_sampling_filters`` (headless runs never fire its callbacks, so
notebooks draw the static figure too).
"""
from __future__ import annotations

import numpy as np
import torch

from folo_edu.sample import (Sampler, SamplingMetadata, apply_min_p, apply_min_tokens,
                             apply_penalties, apply_temperature, apply_top_k, apply_top_p)
from folo_edu.sampling_params import GREEDY_EPS, SamplingParams
from folo_edu.viz._plot import new_ax, seconds


def token_labels(tokenizer, token_ids) -> list[str]:
    """A readable label for each token id: spaces as '␣', newlines as '\\n'."""
    labels = []
    for t in token_ids:
        text = tokenizer.decode([int(t)])
        labels.append(repr(text)[1:-1].replace(" ", "␣") if text else f"<{int(t)}>")
    return labels


def probs_of(logits: torch.Tensor) -> np.ndarray:
    """softmax in float64 as a numpy array; a -inf logit gets probability exactly 0."""
    return torch.softmax(logits.detach().to(torch.float64), dim=-1).cpu().numpy()


def sampler_stages(logits: torch.Tensor, *, prompt_ids=(), output_ids=(),
                   repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, min_tokens: int = 0, stop_ids=(),
                   temperature: float = 1.0, min_p: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0) -> list[tuple[str, torch.Tensor]]:
    """One row of logits [V] through the Sampler's processors, in its order.

    Returns [(name, logits after that processor), ...], starting with ("raw", logits)
    and listing only the processors that are switched on. Same arguments and meaning
    as SamplingParams (``output_ids``: the tokens generated so far; ``stop_ids``: EOS
    and stop token ids, blocked while fewer than ``min_tokens`` were generated).
    With temperature 0 (greedy) the last stage keeps only the argmax.
    """
    if logits.dim() != 1:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected one row [V]")
    x = logits[None]
    stages = [("raw", logits)]

    def add(name, new):
        stages.append((name, new[0]))
        return new

    one = lambda v, dtype=x.dtype: torch.tensor([v], dtype=dtype)  # noqa: E731
    if repetition_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0:
        x = add("penalties", apply_penalties(x, [list(prompt_ids)], [list(output_ids)],
                                             one(repetition_penalty), one(frequency_penalty),
                                             one(presence_penalty)))
    if len(output_ids) < min_tokens:
        x = add("min_tokens", apply_min_tokens(x, [len(output_ids)], [min_tokens],
                                               [set(stop_ids)]))
    if temperature < GREEDY_EPS:
        keep = x.argmax(dim=-1, keepdim=True)
        greedy = torch.full_like(x, float("-inf")).scatter(1, keep, 0.0)
        add("greedy (argmax)", greedy)
        return stages
    if temperature != 1.0:
        x = add(f"temperature {temperature:g}", apply_temperature(x, one(temperature)))
    if min_p > 0.0:
        x = add(f"min_p {min_p:g}", apply_min_p(x, one(min_p)))
    if 0 < top_k < x.shape[1]:
        x = add(f"top_k {top_k}", apply_top_k(x, one(top_k, torch.long)))
    if top_p < 1.0:
        x = add(f"top_p {top_p:g}", apply_top_p(x, one(top_p)))
    return stages


def final_probs(logits: torch.Tensor, **params) -> np.ndarray:
    """The distribution the Sampler draws from, for one row and ``sampler_stages`` params."""
    return probs_of(sampler_stages(logits, **params)[-1][1])


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits (how spread out the distribution is)."""
    p = p[p > 0]
    return max(0.0, float(-(p * np.log2(p)).sum()))


def _shown_tokens(before: np.ndarray, after: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` most likely tokens before, plus any that became top-``top`` after."""
    first = np.argsort(-before)[:top]
    extra = [t for t in np.argsort(-after)[:top] if t not in set(first) and after[t] > 0]
    return np.concatenate([first, np.array(extra[:4], dtype=first.dtype)])


def plot_before_after(before: torch.Tensor, after: torch.Tensor, labels, top: int = 12,
                      title: str = "", ax=None):
    """Grouped bars of the next-token probabilities before (grey) and after (blue) one
    processor, for the ``top`` most likely tokens; a red x marks a token removed."""
    ax = new_ax(ax, (8, 3.2))
    p0, p1 = probs_of(before), probs_of(after)
    shown = _shown_tokens(p0, p1, top)
    x = np.arange(len(shown))
    ax.bar(x - 0.2, p0[shown], width=0.4, color="C7", label="before")
    ax.bar(x + 0.2, p1[shown], width=0.4, color="C0", label="after")
    removed = [i for i, t in enumerate(shown) if p1[t] == 0]
    ax.plot(x[removed] + 0.2, np.zeros(len(removed)), "x", color="C3", markersize=7,
            label="removed" if removed else None)
    ax.set_xticks(x, [labels[t] for t in shown], rotation=45, ha="right", fontsize=8)
    kept = int((p1 > 0).sum())
    ax.set(ylabel="probability", ylim=(0, 1.05 * max(p0[shown].max(), p1[shown].max())),
           title=(title + "\n" if title else "") + f"after: {kept:,} tokens possible, "
           f"entropy {entropy_bits(p0):.2f} -> {entropy_bits(p1):.2f} bits")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    return ax.figure


def plot_processor_effects(before: torch.Tensor, afters: dict, labels, top: int = 10,
                           ncols: int = 2):
    """One ``plot_before_after`` panel per entry of ``afters`` (title -> logits)."""
    from matplotlib.figure import Figure

    nrows = -(-len(afters) // ncols)
    fig = Figure(figsize=(6 * ncols, 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, after) in zip(axes, afters.items()):
        plot_before_after(before, after, labels, top, title, ax=ax)
    for ax in axes[len(afters):]:
        ax.set_visible(False)
    return fig


def plot_sampling_filters(logits: torch.Tensor, labels, temperature: float = 1.0,
                          top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                          top: int = 20, ax=None):
    """The distribution after temperature, min_p, top-k and top-p (the widget's figure)."""
    stages = sampler_stages(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p)
    title = " -> ".join(name for name, _ in stages)
    return plot_before_after(logits, stages[-1][1], labels, top, title, ax=ax)


def sampling_explorer(logits: torch.Tensor, labels, top: int = 20):
    """Sliders for temperature, top-k and top-p over ``plot_sampling_filters``."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    temperature = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05,
                                      description="temperature")
    top_k = widgets.IntSlider(value=0, min=0, max=100, description="top_k (0 off)")
    top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top_p")

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            display(plot_sampling_filters(logits, labels, temperature.value, top_k.value,
                                          top_p.value, top=top))

    for w in (temperature, top_k, top_p):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([temperature, top_k, top_p]), out])


# ---- what each processor costs --------------------------------------------------------
def measure_processor_latency(logits: torch.Tensor, repeats: int = 5,
                              temperature: float = 0.8, min_p: float = 0.05,
                              top_k: int = 50, top_p: float = 0.9) -> dict[str, float]:
    """Seconds (best of ``repeats``) for each processor and the whole Sampler on [B, V].

    Every row gets the same parameters. The processors are chained as in the Sampler,
    so each is timed on the logits it would really get (top-p, for example, sees the
    tokens top-k left). Penalties see a 200-token history. Also times a full
    descending sort of the raw batch: what a textbook top-p would do first.
    """
    batch, vocab = logits.shape
    rows = lambda v, dtype=logits.dtype: torch.full((batch,), v, dtype=dtype,  # noqa: E731
                                                    device=logits.device)
    history = [list(range(0, 2 * 200, 2)) for _ in range(batch)]
    x = {"raw": logits}
    steps = [
        ("penalties", "raw", lambda z: apply_penalties(z, history, history, rows(1.1),
                                                       rows(0.1), rows(0.0))),
        ("min_tokens", "penalties", lambda z: apply_min_tokens(z, [0] * batch, [1] * batch,
                                                               [{0}] * batch)),
        ("temperature", "min_tokens", lambda z: apply_temperature(z, rows(temperature))),
        ("min_p", "temperature", lambda z: apply_min_p(z, rows(min_p))),
        ("top_k", "min_p", lambda z: apply_top_k(z, rows(top_k, torch.long))),
        ("top_p", "top_k", lambda z: apply_top_p(z, rows(top_p))),
        ("full sort (textbook top-p)", "raw", lambda z: z.sort(dim=-1, descending=True)),
    ]
    params = SamplingParams(temperature=temperature, min_p=min_p, top_k=top_k, top_p=top_p,
                            repetition_penalty=1.1, frequency_penalty=0.1, min_tokens=1)
    meta = SamplingMetadata([params] * batch, history, [[]] * batch, [None] * batch,
                            [{0}] * batch)
    sampler = Sampler()
    times = {}
    for name, source, fn in steps + [("whole Sampler call", "raw",
                                      lambda z: sampler(z, meta))]:
        x[name] = fn(x[source])  # warm-up, and the input of the next processor
        times[name] = min(seconds(lambda: fn(x[source]), logits.device)  # other jobs only
                          for _ in range(repeats))                        # ever add time
    return times


def plot_processor_latency(times: dict[str, float], batch: int, vocab: int, ax=None):
    """Horizontal bars of milliseconds per call, one per processor."""
    ax = new_ax(ax, (7, 3.5))
    names = list(times)
    ms = [times[n] * 1e3 for n in names]
    colors = ["C1" if n.startswith("full sort") else "C2" if n.startswith("whole") else "C0"
              for n in names]
    ax.barh(names[::-1], ms[::-1], color=colors[::-1])
    for y, m in enumerate(ms[::-1]):
        ax.annotate(f"{m:.2f} ms", (m, y), textcoords="offset points", xytext=(3, -3),
                    fontsize=8)
    ax.set(xlabel="ms per call (best of runs)",
           title=f"Cost of each processor on a [{batch} x {vocab:,}] batch, measured")
    ax.set_xlim(right=max(ms) * 1.25)
    ax.grid(True, axis="x", alpha=0.3)
    return ax.figure
