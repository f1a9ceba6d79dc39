#!/usr/bin/env bash
# Issue 19 on one GPU, in ONE device call (<= 570 s): the 8-trial sweep of bench/jobs/rt_scratch_sweep_gpu.yaml
# (in-process trials, 0.25 GPU each), a change's before and after alternating, each sweep on its own local cluster.
# Before the call, here: `mkdir -p .base19 && git archive <before> lib | tar -x -C .base19` (git-ignored: carry it) and
# the Rotten Tomatoes CSV + MiniLM tokenizer in .benchdata/ (bench/results/sweep_trials_gpu_dec05_h100.md says how).
# Device call: kind nvidia-h200, timeout_s 600, carry [".devbundle", ".devmin", ".benchdata", ".base19"], command:
#   bash bench/gpu_sweep19.sh
# Back in $OUT: versions.txt, sweep8_<base|new>_<round>.{json,md}. Knobs: ROUNDS (2), CALL_S (570).
set -uo pipefail
OUT=${OUT:-/tmp/gsw19}; mkdir -p "$OUT"
source .devbundle/activate.sh >/dev/null 2>&1 || { echo "activate failed"; exit 1; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
BASE_PATH=$PYTHONPATH
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name --format=csv,noheader; nproc
  python3 -c 'import torch, transformers, ray; print(torch.__version__, transformers.__version__, ray.__version__)'
} 2>&1 | tee "$OUT/versions.txt"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in base new; do
    left=$(( ${CALL_S:-570} - SECONDS ))
    (( left < 100 )) && { echo "stop: ${left}s left"; exit 0; }
    lib=$PWD/lib; [[ $side == base ]] && lib=$PWD/.base19/lib
    export PYTHONPATH=$lib:$PWD/.devmin:$BASE_PATH
    echo "== $side round $round at ${SECONDS}s"
    timeout $(( left - 10 )) python3 bench/sweep_bench.py bench/jobs/rt_scratch_sweep_gpu.yaml sweep.num_samples=8 \
      training.max_steps=4 training.eval_steps=4 data.max_train_samples=256 data.max_eval_samples=64 \
      sweep.trial_in_process=auto tracking.mlflow=false --out "$OUT/sweep8_${side}_$round" --schedulers fifo 2>&1 | tail -4
  done
done
