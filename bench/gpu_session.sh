#!/usr/bin/env bash
# The GPU session in one command (bench/README.md, "A GPU session"), run from anywhere in
# a checkout on a machine with one CUDA GPU: builds for the device, runs the gpu tests and
# the benchmarks within nine minutes, and writes bench/results/gpu-<device>-<date>/; where
# the device runner names an output folder in $OUT, the results are copied there too.
# Arguments go to bench/gpu_session.py (e.g. --dry-run, --budget-s 480, --skip-build).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PYTHON" bench/gpu_session.py ${OUT:+--copy-to "$OUT"} "$@"
