#!/usr/bin/env bash
# Run the M1 (single) and M2 (offline) benchmarks one after the other.
# Results land in benchmarks/results/m1_single_<device>.json and m2_offline_<device>.json.
# Extra arguments go to both, e.g.:  benchmarks/run_all.sh --threads 1
#                                    benchmarks/run_all.sh --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m folo_edu.cli bench --workload single "$@"
"$PY" -m folo_edu.cli bench --workload offline "$@"
