#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU (e.g. a lent H100/H200).
#   1. the CUDA-marked tests (oracle equality on CUDA, sampler on CUDA);
#   2. the M1/M2 oracle and batching tests with device="auto" (= cuda there);
#   3. the GPU throughput benchmark (scripts/gpu_bench.py, Qwen3-0.6B shape).
# Everything it writes goes to $OUT (default benchmarks/results/gpu): JSON, logs,
# and JUnit XML. It needs torch with CUDA, transformers, safetensors, pytest,
# hypothesis and scipy; folo_edu is used from this checkout via PYTHONPATH.
# It takes about 5 minutes on an H200.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
nvidia-smi -L | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"

timeout 240 $PY -m pytest -q -p no:cacheprovider -rs --durations=5 \
    tests/integration/test_cuda.py tests/unit/test_02_sampling.py \
    tests/integration/test_03_forward_pass_and_kv_cache.py \
    tests/integration/test_04_continuous_batching.py \
    --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.log" || status=1

timeout 300 $PY scripts/gpu_bench.py --out "$OUT/gpu_bench.json" --backends sdpa \
    --hf-batch 64 2>&1 | grep -v "Writing model shards" | tee "$OUT/gpu_bench.log" || status=1
exit $status
