#!/usr/bin/env bash
# Issue 21's GPU must-shows in ONE device call (one H200, 8-9.5 minutes):
# - generation tokens/s of a SmolLM2-135M-shaped model (random weights, bf16, SmolLM2's real tokenizer + chat
#   template; exactly 64 new tokens per answer on both servers) at 1/16/64 clients: hfray serve vs plain
#   pipeline("text-generation") behind uvicorn, plus hfray's SSE time to first token at 1 client;
# - 8 LoRA adapters on one shared base vs 8 merged models: CUDA memory, parameters, req/s at 64 clients (8 per id);
# - then tests/gpu/test_serving_lm_gpu.py (HTTP == local generate in bf16, static == dynamic KV cache), time allowing.
# The weights do not travel (94 MB): the model is built from its config on the machine.
#
# Here, once, from the repo root:
#   bash ../shared/device/bundle.sh                                          # .devbundle/ (45 MB)
#   PYTHON=/work/main/.venv/bin/python bash bench/device_assets.sh .devmin   # .devmin/ (9.3 MB: + SmolLM2's tokenizer)
# Then the device tool: kind nvidia-h200, timeout_s 600, carry [".devbundle", ".devmin"] (57 MB with the tree):
#   bash bench/gpu_lm_serve21.sh
# It sources .devbundle/activate.sh itself (its clock includes the install) and sets PYTHONPATH=$PWD/lib:$PWD/.devmin,
# HF_HUB_OFFLINE=1. Back in $OUT: versions.txt, lm_serve_gpu_h200.json + .md (the table; both rewritten after every
# level, so a cut run keeps what it measured), bench.log, test.log; copy the json + md to bench/results/.
# Timing (one call <= 560 s): the benchmark runs hfray (1/16/64 clients, SSE at 1), then 8 adapters shared vs merged,
# then the plain pipeline (1/16/64; its drain per level BASE_DRAIN "20,60,30": at 16 clients its answers all end
# together after ~60 s, at 64 none would within a call: the row says unfinished). Levels that would end after
# BENCH_BUDGET_S are skipped (a row says so); the whole bench is cut at CALL_S - 15 = 545 s. The GPU test (2 passed on the H200
# on Dec 4) is skipped unless >= 100 s are left: alone, same carry: SKIP_BENCH=1 bash bench/gpu_lm_serve21.sh.
# Two calls instead of one (each <= 300 s, same carry): PART=hfray,adapters CALL_S=300 bash bench/gpu_lm_serve21.sh,
# then PART=baseline CALL_S=300 OUT=$OUT/b bash bench/gpu_lm_serve21.sh (CALL_S: the call's seconds, default 560).
# Knobs (env): LEVEL_S (seconds per level, 10), DRAIN_S (hfray levels, 40), BASE_DRAIN, BENCH_BUDGET_S (480),
# ADAPTER_C (adapter levels, "64"), PART, SKIP_BENCH=1 (the test alone), SKIP_TEST=1;
# DEVICE=cpu MODEL=random:tiny DTYPE=float32 PROXY=serve: a CPU dry run.
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run21}
mkdir -p "$OUT"
source .devbundle/activate.sh || { echo "activate failed"; exit 1; }
export PYTHONPATH=$PWD/lib:$PWD/.devmin${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{
  date -u +%FT%TZ
  echo "activate took ${SECONDS}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E '^(Model name|CPU\(s\)):'
  python3 -c 'import sys, torch, transformers, peft, ray; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__, "ray", ray.__version__)'
  ls -la .devmin/smollm2_tokenizer
} 2>&1 | tee "$OUT/versions.txt"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
CALL_S=${CALL_S:-560}
budget=$(( ${BENCH_BUDGET_S:-480} < CALL_S - 35 - SECONDS ? ${BENCH_BUDGET_S:-480} : CALL_S - 35 - SECONDS ))
echo "bench budget ${budget}s (elapsed ${SECONDS}s)" | tee -a "$OUT/versions.txt"
timeout $((CALL_S - 15 - SECONDS)) python3 bench/lm_serve_bench.py --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" \
  --model "${MODEL:-random:smollm2}" \
  --tokenizer-dir .devmin/smollm2_tokenizer --max-new-tokens 64 --concurrency 1,16,64 --stream-concurrency 1 \
  --adapters 8 --adapter-concurrency "${ADAPTER_C:-64}" --seconds "${LEVEL_S:-10}" --drain-s "${DRAIN_S:-40}" --budget-s "$budget" \
  --parts "${PART:-hfray,adapters,baseline}" --baseline-drain-s "${BASE_DRAIN:-20,60,30}" \
  --proxy "${PROXY:-auto}" --out "$OUT/lm_serve_gpu_h200.json" > "$OUT/bench.log" 2>&1
echo "bench exit $? at ${SECONDS}s" | tee -a "$OUT/bench.log"
grep -E '^\{"server"|^\||Error|error' "$OUT/bench.log" | head -60
fi

left=$((${CALL_S:-560} - 5 - SECONDS))
if [ "${SKIP_TEST:-0}" = 1 ] || [ $left -lt 100 ]; then
  echo "test skipped (SKIP_TEST=${SKIP_TEST:-0}, ${left}s left): alone, same carry: SKIP_BENCH=1 bash bench/gpu_lm_serve21.sh" \
    | tee "$OUT/test.log"
else
  HFRAY_GPU_TESTS_DEVICE=${DEVICE:-cuda} timeout $left python3 -m pytest -m gpu tests/gpu/test_serving_lm_gpu.py \
    -x -q -s -p no:cacheprovider > "$OUT/test.log" 2>&1
  echo "test exit $? at ${SECONDS}s" | tee -a "$OUT/test.log"
  tail -15 "$OUT/test.log"
fi
