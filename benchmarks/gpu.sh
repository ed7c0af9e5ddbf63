#!/usr/bin/env bash
# The model benchmark on one CUDA GPU: batches of 128, 512 and 2048 pairs, bf16 autocast, SPINN-PI and
# SPINN-PI-NT at d_hidden 300, ours against the seed-style reference; about 5 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh                 # bf16 autocast
#   AMP=none bash benchmarks/gpu.sh        # float32
#   COMPILE=1 bash benchmarks/gpu.sh       # also torch.compile the classifier (experimental)
#
# Prints the table and saves bench_model_gpu.json. Target (issue 5): >= 25,000 training pairs/s for
# SPINN-PI at batch 512 and >= 20x the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
extra=()
if [[ "${COMPILE:-0}" == 1 ]]; then extra+=(--compile); fi
timeout 300 python benchmarks/bench_model.py \
    --device cuda --amp "${AMP:-bf16}" --threads 4 \
    --batch-sizes 128 512 2048 --d-hidden 300 --variants spinn_pi spinn_pi_nt \
    --reps 3 --n-batches 1 --token-batch 256 \
    --json bench_model_gpu.json "${extra[@]}"
