#!/usr/bin/env bash
# The model benchmark on one CUDA GPU: batches of 128, 512 and 2048 pairs, bf16 autocast, SPINN-PI and
# SPINN-PI-NT at d_hidden 300, ours against the seed-style reference; about 5 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh                 # bf16 autocast
#   AMP=none bash benchmarks/gpu.sh        # float32
#   COMPILE=1 bash benchmarks/gpu.sh       # also torch.compile the classifier (experimental)
#
# Prints the tables and saves bench_model_gpu.json (batches 128 and 512, three repetitions) and
# bench_model_gpu_2048.json (batch 2048, one repetition: the reference's Python loop over 4096
# sentences per step is the slow part). Both files are written after every row, so a run cut short by a
# time limit keeps what it measured. Target (issue 5): >= 25,000 training pairs/s for SPINN-PI at batch
# 512 and >= 20x the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
extra=()
if [[ "${COMPILE:-0}" == 1 ]]; then extra+=(--compile); fi
bench() {
    local seconds=$1
    shift
    timeout "$seconds" python benchmarks/bench_model.py \
        --device cuda --amp "${AMP:-bf16}" --threads 4 \
        --d-hidden 300 --variants spinn_pi spinn_pi_nt --n-batches 1 --token-batch 256 \
        "${extra[@]}" "$@"
}
bench 170 --batch-sizes 128 512 --reps 3 --json bench_model_gpu.json
bench 130 --batch-sizes 2048 --reps 1 --json bench_model_gpu_2048.json \
    || echo "batch 2048 stopped early (exit $?): bench_model_gpu_2048.json holds the rows it finished"
