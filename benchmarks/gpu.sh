#!/usr/bin/env bash
# The model benchmark on one CUDA GPU: batches of 128, 512 and 2048 pairs, bf16 autocast, SPINN-PI and
# SPINN-PI-NT at d_hidden 300, ours against the seed-style reference; about 5 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh                 # bf16 autocast
#   AMP=none bash benchmarks/gpu.sh        # float32
#   COMPILE=1 bash benchmarks/gpu.sh       # also torch.compile the classifier (experimental)
#
# It needs the 1% SNLI training sample, snli_1.0/snli_1.0_train_0.01.jsonl, under $DATA (default
# ../shared/data, else .gpu_data in the repository). A machine that gets only the repository (the
# device tool of this project's workplace) gets it as .gpu_data, prepared here and carried along:
#
#   mkdir -p .gpu_data/snli_1.0 && cp ../shared/data/snli_1.0/snli_1.0_train_0.01.jsonl .gpu_data/snli_1.0/
#   (then run `bash benchmarks/gpu.sh` there with carry [".gpu_data"]; .gpu_data is git-ignored)
#
# Prints the tables and saves, in $OUT (default: the current folder), bench_model_gpu.json (batches 128
# and 512, three repetitions; from batch 512 the reference runs once, cold) and bench_model_gpu_2048.json
# (batch 2048). Both files are written after every row, so a run cut short by its time limit keeps what
# it measured, and the second run goes ahead if the first is cut short. Target (issue 5): >= 25,000
# training pairs/s for SPINN-PI at batch 512 and >= 20x the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # no install needed
python=${PYTHON:-python3}
data=${DATA:-../shared/data}
if [[ ! -f $data/snli_1.0/snli_1.0_train_0.01.jsonl ]]; then data=.gpu_data; fi
if [[ ! -f $data/snli_1.0/snli_1.0_train_0.01.jsonl ]]; then
    echo "no snli_1.0/snli_1.0_train_0.01.jsonl under \$DATA, ../shared/data or .gpu_data (see the header)" >&2
    exit 2
fi
out=${OUT:-.}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
extra=()
if [[ "${COMPILE:-0}" == 1 ]]; then extra+=(--compile); fi
bench() {
    local seconds=$1
    shift
    timeout "$seconds" "$python" benchmarks/bench_model.py --data "$data" \
        --device cuda --amp "${AMP:-bf16}" --threads 4 \
        --d-hidden 300 --variants spinn_pi spinn_pi_nt --n-batches 1 --token-batch 256 \
        "${extra[@]}" "$@"
}
bench 170 --batch-sizes 128 512 --reps 3 --json "$out/bench_model_gpu.json" \
    || echo "batches 128/512 stopped early (exit $?): bench_model_gpu.json holds the rows it finished"
bench 130 --batch-sizes 2048 --reps 1 --json "$out/bench_model_gpu_2048.json" \
    || echo "batch 2048 stopped early (exit $?): bench_model_gpu_2048.json holds the rows it finished"
