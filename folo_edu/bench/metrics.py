"""Small helpers for benchmark numbers: summaries, MFU, token agreement, tables, JSON."""
from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path


def summary(values) -> dict:
    """median / min / max / n of a list of numbers (None entries are skipped)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def percentile(values, p: float):
    """The p-th percentile by linear interpolation (numpy's default), None for no values.
    (The engine's get_stats uses the same rule: llm_engine.percentiles.)"""
    if not values:
        return None
    ordered = sorted(values)
    x = (len(ordered) - 1) * p / 100
    lo = int(x)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (x - lo)


def ratio(a, b):
    return None if a is None or not b else a / b


def mfu(num_parameters: int, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilization: (2 x parameters x tokens/s) / peak FLOP/s.

    2 FLOPs per parameter per token is the matmul work of one forward pass; it leaves
    out attention's own score/value products and counts only the useful (requested)
    tokens, so padding and recomputation never raise it.
    """
    return 2 * num_parameters * tokens_per_s / peak_flops


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How far two engines' greedy outputs agree: identical sequences, and the mean
    fraction of each sequence before the first differing token. Float rounding can
    flip a near-tie and change the rest, so this is a sanity check, not a test."""
    same, prefix = 0, []
    for x, y in zip(a, b):
        same += x == y
        k = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        prefix.append(k / max(len(x), 1))
    return {"identical_sequences": same, "of": len(prefix),
            "mean_matching_prefix": round(sum(prefix) / max(len(prefix), 1), 4)}


def rounded(obj, digits: int = 4):
    """A copy of obj with every float rounded, for readable JSON."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table with right-aligned columns."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(data), indent=1) + "\n")
    return path
