"""M4: the GPU check scripts, exercised on a CPU so they work the first time on a lent GPU.

scripts/gpu_check.sh runs on a GPU machine only; here it is syntax-checked (and linted
where shellcheck is installed). scripts/gpu_bench.py runs its whole matrix with
``--device cpu --tiny``: a tiny random Qwen3, a few short requests, every backend that
runs on a CPU, transformers, the ratios and the JSON.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "gpu_check.sh"
BENCH = ROOT / "scripts" / "gpu_bench.py"
STATUSES = {"ok", "partial", "skipped", "unsupported", "error", "killed"}


def _bench_module():
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_bench(tmp_path, *args, timeout=400):
    out = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--tiny",
                           "--out", str(out), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    assert out.is_file(), f"no JSON written (exit {proc.returncode}):\n{proc.stdout[-3000:]}" \
                          f"\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text()), elapsed


# ---- gpu_check.sh ---------------------------------------------------------------------
def test_gpu_check_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run([bash, "-n", str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_gpu_check_fits_the_device_limits():
    """Under 8 minutes by default, and at most 8 files in $OUT (what comes back)."""
    text = CHECK.read_text()
    budget = int(re.search(r"GPU_CHECK_BUDGET_S:-(\d+)", text).group(1))
    assert budget < 8 * 60
    outputs = set(re.findall(r'\$OUT/([\w.-]+)', text))
    assert {"gpu_bench.json", "check.log", "summary.json", "cuda_tests.xml"} <= outputs
    assert len(outputs) <= 8, outputs
    for needed in ("-m cuda", "test_06_triton_kernels.py", "scripts/gpu_bench.py",
                   "--deadline-s", "timeout"):
        assert needed in text


# ---- gpu_bench.py: pure logic ---------------------------------------------------------
def test_ratios_use_only_complete_runs():
    gb = _bench_module()
    results = {"triton-graphs": {"status": "ok", "output_tok_s": 300.0},
               "triton-eager": {"status": "ok", "output_tok_s": 100.0},
               "sdpa-eager": {"status": "partial", "output_tok_s": 50.0},
               "transformers@subset": {"status": "ok", "output_tok_s": 40.0},
               "triton-graphs@subset": {"status": "ok", "output_tok_s": 120.0}}
    r = gb.ratios(results, list(results))
    assert r["graphs_vs_eager"]["triton-graphs"]["value"] == 3.0
    assert r["vs_transformers"]["triton-graphs@subset"]["value"] == 3.0
    partial = r["vs_sdpa_eager"]["triton-graphs"]
    assert partial["value"] is None and partial["missing"] == {"sdpa-eager": "partial"}
    assert "prefix_value" not in partial  # no progress recorded: no same-prefix ratio


def test_prefix_ratio_compares_the_same_first_tokens():
    gb = _bench_module()
    fast = {"status": "ok", "output_tok_s": 100.0, "progress": [[1.0, 100], [2.0, 200]]}
    # stopped after 4 s at 100 tokens: half the speed of `fast` on those 100 tokens
    slow = {"status": "partial", "output_tok_s": 25.0, "progress": [[2.0, 50], [4.0, 100]]}
    r = gb.ratios({"triton-graphs": fast, "triton-eager": slow}, ["triton-graphs",
                                                                  "triton-eager"])
    e = r["graphs_vs_eager"]["triton-graphs"]
    assert e["value"] is None
    assert e["prefix_output_tokens"] == 100 and e["prefix_value"] == 4.0


def test_every_default_config_is_defined():
    gb = _bench_module()
    for name in gb.DEFAULT_GPU + gb.DEFAULT_TINY:
        cfg = gb.CONFIGS[name]
        assert cfg["workload"] in ("full", "subset", "small")
        assert cfg["engine"] == "transformers" or cfg["backend"] in (
            "naive", "sdpa", "paged-torch", "flex", "triton")
    # the headline number first, then what graphs/eager needs, then transformers
    assert gb.DEFAULT_GPU[:4] == ["triton-graphs", "triton-eager", "transformers@subset",
                                  "triton-graphs@subset"]


# ---- gpu_bench.py: the tiny CPU matrix ------------------------------------------------
def test_tiny_cpu_matrix_writes_complete_json(tmp_path):
    # Triton runs in its interpreter here: 4 s each is enough to reach the "partial" path.
    # Generous caps for the configs that must finish: a busy 2-core machine (CI runs two
    # test workers) can make the tiny runs several times slower than on an idle one.
    proc, res, elapsed = _run_bench(tmp_path, "--isolate", "none", "--cap", "triton-eager=4",
                                    "--cap", "triton-graphs@subset=4", "--cap", "flex-eager=180",
                                    "--cap", "sdpa-eager=180", "--cap", "naive-eager=180")
    print(f"tiny CPU matrix: {elapsed:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for key in ("machine", "source", "model", "engine_settings", "timing", "workloads",
                "configs", "results", "skipped", "ratios", "reference_points", "elapsed_s"):
        assert key in res, key
    assert res["finished"] is True and res["mode"] == "tiny"
    assert res["timing"]["timed_runs_per_config"] == 1
    assert res["machine"]["torch"] and res["source"]["sources_sha256"]
    assert res["reference_points"]["nano_vllm_rtx4070_laptop_output_tok_s"] == 1434
    gb = _bench_module()
    assert [c["name"] for c in res["configs"]] == gb.DEFAULT_TINY
    results = res["results"]
    for name, r in results.items():
        assert r["status"] in STATUSES, (name, r)
        if r["status"] == "ok":
            assert r["output_tok_s"] > 0 and r["wall_s"] > 0, (name, r)
            assert r["output_tokens"] == r["expected_output_tokens"], (name, r)
            assert r.get("exact_lengths", True), (name, r)
            assert r["cuda_graph_status"], (name, r)
            if r.get("progress") is not None:
                assert r["progress"][-1][1] == r["output_tokens"], (name, r)
        else:
            assert r.get("reason") or r.get("error"), (name, r)
        assert r["status"] != "error", (name, r)
    must_run = ["sdpa-eager", "naive-eager", "transformers@subset", "sdpa-eager@subset",
                "paged-torch-eager@small", "flex-eager"]
    # The triton interpreter runs out of its 4 s: it is recorded as partial, and the
    # later triton configs as partial or skipped with that reason.
    for name in ("triton-eager", "triton-graphs@subset"):
        assert results[name]["status"] in ("ok", "partial", "skipped"), results[name]
    graphs = results["triton-graphs@subset"]
    if graphs["status"] != "skipped":
        assert graphs["cuda_graph_status"].startswith("off"), graphs
        assert graphs["engine_kwargs"]["enforce_eager"] is False
    assert results["sdpa-eager"]["engine_kwargs"]["enforce_eager"] is True
    for name in must_run:
        assert results[name]["status"] == "ok", (name, results[name])
    assert res["ratios"]["vs_transformers"]["sdpa-eager@subset"]["value"] > 0
    assert res["ratios"]["vs_sdpa_eager"]["naive-eager"]["value"] > 0


def test_tiny_cpu_config_in_its_own_process(tmp_path):
    """The default on a GPU: each config in a child process (a crash costs that one)."""
    proc, res, elapsed = _run_bench(tmp_path, "--configs", "sdpa-eager@subset",
                                    "--cap", "sdpa-eager@subset=180")
    print(f"one config in a child process: {elapsed:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert res["isolation"] == "process"
    r = res["results"]["sdpa-eager@subset"]
    assert r["status"] == "ok", r
    assert r["output_tok_s"] > 0 and r["process_s"] > 0
    assert r["output_tokens"] == res["workloads"]["subset"]["total_output_tokens"]


def test_deadline_skips_configs_and_still_writes_json(tmp_path):
    proc, res, _ = _run_bench(tmp_path, "--deadline-s", "0", "--configs",
                              "sdpa-eager,transformers@subset")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert res["skipped"] == ["sdpa-eager", "transformers@subset"]
    for r in res["results"].values():
        assert r["status"] == "skipped" and r["reason"].startswith("deadline")
