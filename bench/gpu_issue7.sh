#!/usr/bin/env bash
# Issue #7 on one GPU: where the start-up goes (timeline) and throughput after the 12-01 reverts.
#   source .devbundle/activate.sh && OUT=/tmp/i7 bash bench/gpu_issue7.sh [ceiling|overhead|cls|mlm|all]
# Results (JSON + Markdown, flattened: the device tool drops deep trees) land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/i7}; WORK=${WORK:-/tmp/i7-work}; WHAT=${1:-all}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
keep() {  # copy a bench's top-level JSON/MD into $OUT under a prefix
  for f in "$WORK/$1"/*.json "$WORK/$1"/*.md; do [ -f "$f" ] && cp "$f" "$OUT/$1_$(basename "$f")"; done
}
if [[ $WHAT == ceiling ]]; then  # the raw step without dropout / autocast casts (bench/step_profile.py)
  mkdir -p "$WORK/ceil"
  timeout ${CEIL_S:-360} python3 bench/step_profile.py --ceiling --batches ${CEIL_BATCHES:-256} --steps 30 \
    --out "$WORK/ceil/step_ceiling.json" 2>&1 | grep -E '^\{|Error' | cut -c1-400
  keep ceil
fi
if [[ $WHAT == overhead || $WHAT == all ]]; then
  timeout ${OVH_S:-300} python3 bench/overhead_bench.py --out "$WORK/ovh" --gpu --workloads ${OVH_WL:-cls,mlm} \
    --repeats ${OVH_REPEATS:-1} 2>&1 | grep -v '^{' | tail -60
  keep ovh
fi
if [[ $WHAT == cls || $WHAT == all ]]; then
  timeout ${CLS_S:-240} python3 bench/throughput_bench.py --out "$WORK/tp_cls" --workloads cls --gpus 1 --batch 64 \
    --steps 200 ${CLS_ARGS:-} 2>&1 | grep -E '^\{"workload' | cut -c1-400
  keep tp_cls
fi
if [[ $WHAT == mlm || $WHAT == all ]]; then
  timeout ${MLM_S:-420} python3 bench/throughput_bench.py --out "$WORK/tp_mlm" --workloads mlm --gpus 1 --batch 256 \
    --steps 200 --hfray-variants ${MLM_VARIANTS:-compile,exact,compile-exact} ${MLM_ARGS:-} 2>&1 \
    | grep -E '^\{"workload' | cut -c1-400
  keep tp_mlm
fi
ls -la "$OUT"
