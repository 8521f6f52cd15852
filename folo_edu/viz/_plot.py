"""Shared by the viz modules: a fresh axes, a synchronized timer, the backends' styles."""
from __future__ import annotations

import time

from folo_edu.bench.machine import synchronize

# colour and marker of each attention backend, the same in every M4 figure
BACKEND_STYLE = {"naive": ("0.45", "o"), "sdpa": ("C0", "s"), "paged-torch": ("C2", "^"),
                 "flex": ("C3", "v"), "triton": ("C1", "D"), "numba": ("C5", "P")}


def new_ax(ax=None, figsize=(6.5, 3.4)):
    """``ax`` itself, or the axes of a new constrained-layout Figure of ``figsize``.

    Figures are built without pyplot, so nothing is drawn twice in a notebook.
    """
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def seconds(fn, device="cpu") -> float:
    """Wall seconds of one ``fn()`` call, with the device synchronized before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0
