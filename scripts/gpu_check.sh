#!/usr/bin/env bash
# The GPU check (milestone M4), for a machine with a CUDA GPU, e.g. a lent H100/H200.
# Run from anywhere:  OUT=/some/dir bash scripts/gpu_check.sh
#
#   1. env           python3 with CUDA torch, triton and the test/bench packages; a missing
#                    package is installed (from ./.whl if present, else pip, 90 s at most)
#   2. cuda_tests    pytest -m cuda over tests/ (oracle equality on CUDA, sampler, ...)
#   3. triton_tests  tests/unit/test_06_triton_kernels.py, all of it: on a GPU its kernels
#                    run compiled on CUDA tensors
#   4. bench         scripts/gpu_bench.py: the M4 matrix on the Qwen3-0.6B shape (random
#                    weights) with nano-vllm's workload, 256 requests, lengths 100-1024;
#                    its random model is built in the background while the tests run
#
# Everything is bounded by one budget, GPU_CHECK_BUDGET_S (default 450 s; at most 15 s more
# if a step must be killed: under 8 minutes, the machine's own start excluded). Each test
# step has its own timeout, and the bench gets what is left (its --deadline-s), so slow
# tests shorten the bench, never the other way round. All steps always run; the exit
# code is 1 if any failed.
#
# Writes to $OUT (default benchmarks/results/gpu/latest), five files at most:
#   check.log            everything printed, the summary line last
#   cuda_tests.xml       JUnit XML of step 2      triton_tests.xml   JUnit XML of step 3
#   gpu_bench.json       the bench results        summary.json       step statuses, times
# On a lent machine without git history, set FOLO_EDU_COMMIT to the commit being run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT=${OUT:-benchmarks/results/gpu/latest}
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
CUDA_TESTS_TIMEOUT_S=${CUDA_TESTS_TIMEOUT_S:-150}
TRITON_TESTS_TIMEOUT_S=${TRITON_TESTS_TIMEOUT_S:-100}
mkdir -p "$OUT" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL_DIR=${TMPDIR:-/tmp}/folo_gpu_check_model
STEPS=()   # "name|status|seconds|detail"

record() {  # name status seconds detail
    STEPS+=("$1|$2|$3|$4")
    echo "=== $1: $2 ($3 s) $4"
}

step_env() {
    local t0=$SECONDS ok=ok detail=""
    echo "=== env: $(date -u +%FT%TZ), budget ${BUDGET_S} s"
    timeout 20 nvidia-smi -L || { ok=FAIL; detail+="nvidia-smi failed; "; }
    # import name -> pip name; torch and triton are never installed here (a CUDA torch
    # must come with the machine, and pip would pick a build for us).
    local missing=()
    read -r -a missing < <("$PY" - <<'EOF'
import importlib.util
need = {"pytest": "pytest", "numpy": "numpy", "scipy": "scipy", "hypothesis": "hypothesis",
        "yaml": "pyyaml", "packaging": "packaging", "transformers": "transformers",
        "safetensors": "safetensors", "tokenizers": "tokenizers",
        "huggingface_hub": "huggingface-hub", "tqdm": "tqdm"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
    if ((${#missing[@]})); then
        echo "missing python packages: ${missing[*]}"
        local pins
        pins=$(mktemp)
        "$PY" -c "import torch; print('torch==' + torch.__version__)" >"$pins" 2>/dev/null
        local from=pip args=(--disable-pip-version-check --retries 1 --timeout 10)
        if [ -d .whl ]; then from=.whl args=(--no-index --find-links .whl); fi
        if timeout 90 "$PY" -m pip install -q "${args[@]}" -c "$pins" "${missing[@]}"; then
            detail+="installed from $from: ${missing[*]}; "
        else
            ok=FAIL
            detail+="pip install from $from failed: ${missing[*]}; "
        fi
    fi
    "$PY" - <<'EOF' || { ok=FAIL; detail+="python/torch/CUDA check failed (see above); "; }
import sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA",
      torch.version.cuda, "| available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
import transformers
print("transformers", transformers.__version__)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU is visible to torch: this check needs one")
print("gpu", torch.cuda.get_device_name(), "| memory GiB",
      round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
EOF
    echo "commit: ${FOLO_EDU_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    record env "$ok" $((SECONDS - t0)) "$detail"
}

junit_counts() {  # file -> "P passed, F failed, E errors, S skipped"
    "$PY" - "$1" <<'EOF' 2>/dev/null || echo "no JUnit XML"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(f"{n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, "
      f"{n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
EOF
}

run_pytest() {  # name timeout junit args...
    local name=$1 limit=$2 xml=$3 t0=$SECONDS rc
    shift 3
    echo "=== $name: pytest $* (timeout ${limit} s)"
    timeout -k 10 "$limit" "$PY" -m pytest -q -rs -p no:cacheprovider --durations=10 \
        --junitxml="$xml" "$@"
    rc=$?
    local status=ok why="" counts
    counts=$(junit_counts "$xml")
    if [ $rc -ne 0 ]; then status=FAIL; fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="timed out after ${limit} s; "; fi
    # On a GPU machine every one of these must run: all skipped means no GPU was used.
    if [[ $counts == "0 passed"* ]]; then status=FAIL why+="no test passed; "; fi
    record "$name" "$status" $((SECONDS - t0)) "${why}exit $rc; $counts"
}

step_bench() {
    local t0=$SECONDS
    if [ -n "${BUILD_PID:-}" ]; then
        wait "$BUILD_PID" || echo "background model build failed (the bench builds it):" \
            "$(tail -n 5 "$MODEL_DIR.log" 2>/dev/null)"
    fi
    local left=$((BUDGET_S - (SECONDS - T0)))
    local deadline=$((left - 20))
    if [ $deadline -lt 45 ]; then deadline=45; fi
    echo "=== bench: scripts/gpu_bench.py --deadline-s $deadline ($left s of the budget left)"
    timeout -k 10 $((deadline + 25)) "$PY" scripts/gpu_bench.py --device cuda \
        --out "$OUT/gpu_bench.json" --deadline-s "$deadline" --model-dir "$MODEL_DIR"
    local rc=$? status=ok
    if [ $rc -ne 0 ]; then status=FAIL; fi
    local detail
    detail=$("$PY" - "$OUT/gpu_bench.json" <<'EOF' 2>/dev/null || echo "no JSON"
import collections, json, sys
r = json.load(open(sys.argv[1]))
res = r.get("results", {})
counts = collections.Counter(v.get("status") for v in res.values())
parts = [", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
for name in ("triton-graphs", "sdpa-eager"):
    v = res.get(name, {})
    if v.get("status") == "ok":
        parts.append(f"{name} {v['output_tok_s']:,.0f} tok/s")
g = r.get("ratios", {}).get("graphs_vs_eager", {}).get("triton-graphs", {}).get("value")
if g:
    parts.append(f"graphs/eager {g:.2f}x")
h = r.get("ratios", {}).get("vs_transformers", {}).get("triton-graphs@subset", {}).get("value")
if h:
    parts.append(f"vs transformers {h:.2f}x")
print("; ".join(parts))
EOF
)
    record bench "$status" $((SECONDS - t0)) "exit $rc; $detail"
}

main() {
    T0=$SECONDS
    step_env
    # The bench's random Qwen3-0.6B-shape model (CPU work) is built while the tests run.
    rm -rf "$MODEL_DIR"
    OMP_NUM_THREADS=8 "$PY" scripts/gpu_bench.py --build-model-only --model-dir "$MODEL_DIR" \
        >"$MODEL_DIR.log" 2>&1 &
    BUILD_PID=$!
    run_pytest cuda_tests "$CUDA_TESTS_TIMEOUT_S" "$OUT/cuda_tests.xml" tests -m cuda \
        --ignore=tests/unit/test_06_triton_kernels.py
    if [ -f tests/unit/test_06_triton_kernels.py ]; then
        run_pytest triton_tests "$TRITON_TESTS_TIMEOUT_S" "$OUT/triton_tests.xml" \
            tests/unit/test_06_triton_kernels.py
    else
        record triton_tests FAIL 0 "tests/unit/test_06_triton_kernels.py is missing"
    fi
    step_bench
    rm -rf "$MODEL_DIR" "$MODEL_DIR.log"

    local verdict=PASS s line json="" sep=""
    for s in "${STEPS[@]}"; do
        IFS='|' read -r n st sec det <<<"$s"
        if [ "$st" != ok ]; then verdict=FAIL; fi
        line+=" | $n $st ${sec}s: $det"
        det=${det//\\/\\\\}
        json+="$sep{\"step\": \"$n\", \"status\": \"$st\", \"seconds\": $sec, \"detail\": \"${det//\"/\\\"}\"}"
        sep=", "
    done
    printf '{"verdict": "%s", "total_s": %d, "budget_s": %d, "steps": [%s]}\n' \
        "$verdict" $((SECONDS - T0)) "$BUDGET_S" "$json" >"$OUT/summary.json"
    echo "gpu_check: $verdict in $((SECONDS - T0)) s$line"
    [ "$verdict" = PASS ]
}

main 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
