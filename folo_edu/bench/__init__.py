"""Benchmarks of folo_edu against transformers (``folo-edu bench``).

    workloads  the requests: random prompts, fixed seed, exact output lengths
    runners    FoloRunner (folo_edu) and HFRunner (transformers generate)
    metrics    medians, ratios, MFU, tables, JSON
    machine    the machine description and its measured matmul peak
    suites     the M1 "single" and M2 "offline" suites; ``run(BenchConfig(...))``
    kv_memory  M3: KV-cache memory waste of paged vs contiguous caches
    serving    a live server under Poisson arrivals: TTFT/ITL p50/p99 per request rate

The suites are imported on first use, so ``from folo_edu.bench import kv_memory``
stays light.
"""
__all__ = ["BenchConfig", "run", "run_single", "run_offline"]


def __getattr__(name):
    if name in __all__:
        from folo_edu.bench import suites

        return getattr(suites, name)
    raise AttributeError(f"module 'folo_edu.bench' has no attribute {name!r}")
