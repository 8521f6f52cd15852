"""What a benchmark ran on, and how fast that machine multiplies matrices.

Every result file carries ``machine_info()`` so numbers from different machines are
never compared by mistake. It names no host: only the CPU model, core and thread
counts, memory, GPU and library versions.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def resolve_bench_device(device: str) -> torch.device:
    """"auto" is cuda when a GPU is visible, else cpu; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; expected cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or auto")
    return torch.device(device)


def synchronize(device) -> None:
    """Wait for queued GPU work, so a timer read afterwards measures it (no-op on CPU).

    CUDA calls return before the work is done, so a timer must wait for it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    """The SIMD extensions that decide the fp32 matmul peak (avx2, avx512f, amx...)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def machine_info(device: torch.device) -> dict:
    """A host-name-free description of the machine and software a benchmark ran on."""
    import transformers

    import folo_edu

    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    info = {
        "cpu_model": _cpu_model(),
        "cpu_simd_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "folo_edu": folo_edu.__version__,
        "device": device.type,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device if device.type == "cuda" else 0)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}
    return info


def source_version() -> dict:
    """The git commit of the folo_edu checkout that ran, and whether files differ from it
    (None where folo_edu is not a git checkout)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.rstrip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return {"commit": None, "modified_files": None}
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "folo_edu")
    return {"commit": commit,
            "modified_files": sorted(line[3:] for line in (changed or "").splitlines())}


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: a busy machine (load > cores) means noisy numbers."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 10) -> dict:
    """The machine's practical matmul peak: FLOP/s of torch.mm on two n x n matrices.

    One warm-up call, then ``repeats`` timed ones (each 2 n^3 FLOPs); the median is
    the peak that MFU divides by. It is measured in the same process, threads and
    dtype as the benchmark, so MFU compares like with like.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    flops = 2 * n ** 3
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        runs.append(flops / (time.perf_counter() - t0))
    return {"op": f"torch.mm {n}x{n} @ {n}x{n}", "dtype": str(dtype).replace("torch.", ""),
            "flop_per_call": flops, "repeats": repeats,
            "gflops_runs": [round(r / 1e9, 2) for r in runs],
            "gflops_median": round(statistics.median(runs) / 1e9, 2),
            "gflops_max": round(max(runs) / 1e9, 2)}
