#!/usr/bin/env bash
# Issue 19 on one GPU, in ONE device call (<= 560 s): submit -> first step for the two one-worker launches
# (resources.launch=task vs train) against the plain script in the same call, then one real `hfray train` of the
# MiniLM job on the GPU each way (the in-process runner in a Ray task had never run on a GPU).
# Device call: kind nvidia-h200, timeout_s 600, carry [".devbundle", ".devmin"], command:
#   bash bench/gpu_start19.sh
# E2E_EXTRA: more overrides (tracking.mlflow=false where mlflow is not installed).
# Back in $OUT: versions.txt, ovh_{task,train}_*.{json,md}, e2e_{task,train}.log. PART=ovh|e2e|all (default all).
# PART=imp: the one-task run's imports against the plain script's (bench/worker_imports.py --gpu; ~60 s) -> imp_*.
# PART=ab: a change's before/after, interleaved, each on its own cluster (overhead_bench.py --base-lib; ~5 min):
#   BASE_LIB=<dir> where, before the call, `git archive <before> lib | tar -x -C .base19` made .base19/lib
#   (untracked and not ignored, so it travels with the working tree) -> ab_*.
set -uo pipefail
OUT=${OUT:-/tmp/gs19}; WORK=${WORK:-/tmp/gs19-work}
mkdir -p "$OUT" "$WORK"
source .devbundle/activate.sh >/dev/null 2>&1 || { echo "activate failed"; exit 1; }
export PYTHONPATH=$PWD/lib:$PWD/.devmin${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
{ date -u +%FT%TZ; echo "activate took ${SECONDS}s"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  nproc; python3 -c 'import torch, transformers, ray; print(torch.__version__, transformers.__version__, ray.__version__)'
} 2>&1 | tee "$OUT/versions.txt"
PART=${PART:-all}  # ovh | e2e | all | imp | ab
if [[ $PART == imp ]]; then
  timeout ${IMP_S:-400} python3 bench/worker_imports.py --out "$WORK/imp" --gpu 2>&1 | tail -50
  for f in "$WORK"/imp/imports.*; do [ -f "$f" ] && cp "$f" "$OUT/imp_$(basename "$f")"; done
  exit 0
fi
if [[ $PART == ab ]]; then
  timeout ${AB_S:-540} python3 bench/overhead_bench.py --out "$WORK/ab" --gpu --workloads cls --repeats ${REPEATS:-3} \
    --shared-storage --runners plain,hfray-base,hfray --base-lib "${BASE_LIB:-.base19/lib}" 2>&1 | grep -v '^{' | tail -40
  for f in "$WORK"/ab/overhead.*; do [ -f "$f" ] && cp "$f" "$OUT/ab_$(basename "$f")"; done
  exit 0
fi
for launch in task train; do
  [[ $PART == e2e ]] && break
  timeout ${OVH_S:-170} python3 bench/overhead_bench.py --out "$WORK/ovh_$launch" --gpu --workloads cls \
    --repeats ${REPEATS:-2} --shared-storage --set resources.launch=$launch 2>&1 | grep -v '^{' | tail -30
  for f in "$WORK/ovh_$launch"/*.json "$WORK/ovh_$launch"/*.md; do
    [ -f "$f" ] && cp "$f" "$OUT/ovh_${launch}_$(basename "$f")"; done
  echo "== after overhead $launch: ${SECONDS}s"
done
# The builtin datasets are not on the GPU machine: a learnable CSV (bench/e2e_csv.py) and the tiny BERT smoke job.
[[ $PART == ovh ]] || python3 bench/e2e_csv.py "$WORK/e2e.csv" 4000
for launch in task train; do
  [[ $PART == ovh ]] && break
  start=$SECONDS
  timeout ${E2E_S:-110} python3 -m hfray train jobs/tiny_bert_smoke.yaml data.train="$WORK/e2e.csv" \
    resources.num_workers=1 resources.gpus_per_worker=1 resources.launch=$launch training.max_steps=300 \
    training.eval_steps=100 storage.path=$WORK/runs_$launch ${E2E_EXTRA:-} --fresh > "$OUT/e2e_$launch.log" 2>&1
  echo "== e2e $launch rc=$? wall $((SECONDS - start))s"; tail -14 "$OUT/e2e_$launch.log"
  art=$(ls -d "$WORK"/runs_$launch/*/artifact 2>/dev/null | head -1)
  [ -n "$art" ] && timeout 60 python3 -m hfray predict "$art" "a superb and moving film" "dull and tedious plot" 2>&1 | tail -4
done
