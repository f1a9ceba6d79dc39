#!/usr/bin/env bash
# Issue 22's GPU must-shows: the shipped GRPO job (jobs/grpo_arithmetic.yaml, SmolLM2-135M-Instruct + LoRA, 60 steps,
# reward evaluated at steps 0/20/40/60) and QLoRA SFT of SmolLM2 against bf16 LoRA (peak memory, loss falls, the
# adapter generates), from tests/gpu/test_grpo_gpu.py. Results: $OUT/grpo_gpu.json + grpo_gpu.md -> bench/results/.
#
# Here, once, from the repo root:
#   bash ../shared/device/bundle.sh                                        # .devbundle/ (45 MB)
#   PYTHON=/work/main/.venv/bin/python bash bench/grpo_device_assets.sh    # .devgrpo/, .devsmol-{1,2,3}/ (prints sizes)
#
# Device calls, kind nvidia-h200. The GGUF (98 MB) travels in three parts to ONE warm machine: it is given back
# after 30 s idle, so send each call as soon as the previous one returns (/tmp survives while it is held).
#   1. carry [".devbundle", ".devsmol-1"], timeout_s 300:
#        source .devbundle/activate.sh && mkdir -p /tmp/smol && cp .devsmol-1/part-1 /tmp/smol/ && ls -la /tmp/smol
#   2. carry [".devsmol-2"], timeout_s 120:
#        cp .devsmol-2/part-2 /tmp/smol/ && ls -la /tmp/smol
#   3. carry [".devsmol-3", ".devgrpo"], timeout_s 600:
#        GRPO_EVAL_ROWS=16 bash bench/gpu_grpo22.sh grpo qlora
#      GRPO with LoRA first (~6 min on 2026-12-04 with 16 evaluation prompts), then QLoRA SFT vs LoRA SFT if 150 s
#      are left (it was not: 202 s left; call 4).
#   4. only if call 3 says "qlora skipped": carry [".devgrpo"], timeout_s 600:   bash bench/gpu_grpo22.sh qlora
#      (real weights: call 3 converted the GGUF into ~/.cache/hfray on that machine).
# QLoRA alone, on any machine (fresh: SmolLM2's architecture with random weights, saved and loaded 4-bit like the
# real ones): carry [".devbundle", ".devgrpo"] (61 MB), timeout_s 600:   bash bench/gpu_grpo22.sh qlora
# Extra part grpo-qlora: the GRPO job on a 4-bit base (GRPO_QLORA_STEPS, default 30).
# Knobs (env): GRPO_STEPS (60: the shipped job's max_steps; evaluations at 0 and every third), GRPO_EVAL_ROWS
# (validation prompts per evaluation; the job's 32 cost ~67 s an evaluation on an H200: 60 steps did not fit 567 s).
# Back in $OUT: versions.txt, <part>.log, grpo_gpu.json + grpo_gpu.md (rewritten after every run), and the GRPO
# runs' hfray_metrics.jsonl (the reward curve, also when a run is cut by the time limit).
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run22}
mkdir -p "$OUT"
if [ ! -f /tmp/site/.bundle-ok ]; then
  [ -f .devbundle/activate.sh ] || { echo "no .devbundle installed on this machine: carry .devbundle"; exit 1; }
  source .devbundle/activate.sh || { echo "activate failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD/lib:$PWD/.devgrpo PATH=/tmp/site/bin:$PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HFRAY_BENCH_OUT=$OUT HFRAY_SMOLLM2_TOKENIZER=$PWD/.devgrpo/smollm2_tokenizer
SMOL=${SMOL:-/tmp/smol}  # where calls 1 and 2 left the first two parts
GGUF=$SMOL/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f .devsmol-3/part-3 ] && [ ! -f "$GGUF" ]; then
  if cat "$SMOL/part-1" "$SMOL/part-2" .devsmol-3/part-3 > "$GGUF.part" \
     && [ "$(sha256sum < "$GGUF.part" | cut -d' ' -f1)" = "$(cat .devsmol-3/sha256)" ]; then
    mv "$GGUF.part" "$GGUF" && rm -f "$SMOL/part-1" "$SMOL/part-2" && echo "GGUF reassembled, sha256 ok"
  else
    rm -f "$GGUF.part"
    echo "GGUF parts missing or wrong (machine given back between calls?): redo calls 1 and 2 before this one"
  fi 2>&1 | tee -a "$OUT/versions.txt"
fi
[ -f "$GGUF" ] && export HFRAY_SMOLLM2_GGUF=$GGUF
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch, transformers, peft, trl, ray, bitsandbytes as b; print("python", sys.version.split()[0],
"torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__,
"trl", trl.__version__, "ray", ray.__version__, "bitsandbytes", b.__version__)'
  ls -la "$SMOL" 2>&1
  if [ -f "$GGUF" ]; then
    echo "GGUF $GGUF: SmolLM2-135M-Instruct's real weights"
  else
    echo "no GGUF: the QLoRA part trains a random-init SmolLM2 architecture; the GRPO part is skipped"
  fi
} 2>&1 | tee -a "$OUT/versions.txt"

run_part() {  # name, min seconds left, pytest -k expression, extra env
  local name=$1 need=$2 expr=$3 left=$((585 - SECONDS))
  if [ $left -lt "$need" ]; then
    echo "$name skipped (${left}s left): run it in a call of its own: bash bench/gpu_grpo22.sh $name" \
      | tee -a "$OUT/versions.txt"
    return
  fi
  echo "$name: start at ${SECONDS}s, ${left}s left" | tee -a "$OUT/versions.txt"
  env "${@:4}" timeout $left python3 -m pytest -m gpu tests/gpu/test_grpo_gpu.py -k "$expr" -x -q -s \
    -p no:cacheprovider --basetemp=/tmp/grpo22-$name > "$OUT/$name.log" 2>&1
  echo "$name: exit $? at ${SECONDS}s" | tee -a "$OUT/versions.txt"
  grep -E "passed|failed|skipped|Error|assert" "$OUT/$name.log" | tail -8
  f=$(find /tmp/grpo22-$name -name hfray_metrics.jsonl 2>/dev/null | head -1)  # the curve, also of a cut run
  [ -n "$f" ] && [ "$name" != qlora ] && cp "$f" "$OUT/metrics_$name.jsonl"  # (at most 8 files come back)
}

for part in "$@"; do
  case $part in
    grpo) run_part grpo 240 "reward_rises and not qlora" HFRAY_GRPO_STEPS="${GRPO_STEPS:-60}" HFRAY_GRPO_EVAL_ROWS="${GRPO_EVAL_ROWS:-}" ;;
    qlora) run_part qlora 150 "qlora_sft" ;;
    grpo-qlora) run_part grpo-qlora 240 "reward_rises and qlora" HFRAY_GRPO_STEPS="${GRPO_QLORA_STEPS:-30}" ;;
    *) echo "unknown part $part (grpo, qlora, grpo-qlora)" ;;
  esac
done
cat "$OUT/grpo_gpu.md" 2>/dev/null
