#!/usr/bin/env bash
# Second device call after bench/gpu_bench.sh: is the host slow, is the forward Python-bound, do more
# replicas per GPU scale, and how much do Serve's processes burn with no traffic? Results in $OUT.
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/lib:$PWD/.devassets${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
timeout 90 python3 bench/gpu_probe.py --batches 1,16,64 --seq 16 --repeat 30 2>&1 | tee "$OUT/probe.log" | grep '^{'
tuned="batch_wait_timeout_s=0.002 ingress_replicas=6 access_log=false max_ongoing_requests=64"
timeout 150 python3 bench/serve_bench.py --model bert-base --device cuda --dtype bf16 --num-cpus 1 --ray-num-cpus 16 \
  --only hfray --concurrency 96 --requests 10000000 --max-seconds 5 --warmup 64 --client-procs 4 --idle-seconds 3 \
  --out "$OUT/serve_gpu_r6.json" --variant "name=r6-b32-i6 replicas=6 num_gpus=0.16 max_batch_size=32 $tuned" \
  > "$OUT/bench_r6.log" 2>&1
echo "r6 bench exit $?"
grep -E '^\{"server"' "$OUT/bench_r6.log"
