#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script for a lent H100/H200 machine:
# compiled kernel parity tests, launch-config tuning, and the CUDA MoE benchmark.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (results land in OUT_DIR, default results/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu}"
mkdir -p "$out"
make setup >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
.venv/bin/python -m pytest -q -m gpu tests/kernels 2>&1 | tee "$out/pytest-gpu.txt"
# tune the benchmark's shapes into the shipped table (the bench reads it), keep a copy
.venv/bin/python -m kernels.tune --op moe_experts --quick \
    --shape E=8,H=1024,I=2048,topk=2 --shape E=64,H=1024,I=512,topk=6 --batch-sizes 16,512,4096 2>&1 | tail -20 | tee "$out/tune.txt"
cp kernels/configs/moe_experts.json "$out/moe_experts.json"
.venv/bin/fathom bench moe --device cuda --json "$out/bench-moe-cuda.json" 2>&1 | tail -40
.venv/bin/fathom bench table "$out/bench-moe-cuda.json" > "$out/bench-moe-cuda.md"
echo "results in $out"
