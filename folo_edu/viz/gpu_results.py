"""The committed GPU results (benchmarks/results/gpu), read and drawn."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from folo_edu.viz._plot import new_ax

GPU_RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu"


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
    ax = new_ax(ax, (7, 0.45 * len(done) + 1.4))
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
