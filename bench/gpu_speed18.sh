#!/usr/bin/env bash
# Issue 18's decoder rows in ONE device call (one H200, <= 540 s): bench/throughput_bench.py's bare / plain / hfray
# runners on LoRA DPO (plain = TRL's DPOTrainer) and LoRA SFT (plain = TRL's SFTTrainer) of the SmolLM2-135M shape,
# then the Llama-shaped causal-LM pre-training (plain = HF Trainer) if the call still has time; models from configs,
# the bench's own byte-level BPE tokenizer (trained on its synthetic corpus on the machine: nothing to stage for it).
#
# Here, once, from the repo root:
#   bash ../shared/device/bundle.sh                                          # .devbundle/ (Ray, TRL, datasets, ...)
#   PYTHON=/work/main/.venv/bin/python bash bench/device_assets.sh .devmin   # .devmin/ (not read by these workloads;
#                                                                            #  carried for the usual PYTHONPATH)
# Device call: kind nvidia-h200, timeout_s 600, carry [".devbundle", ".devmin"], command:
#   bash bench/gpu_speed18.sh
# It sources .devbundle/activate.sh itself. Back in $OUT: versions.txt, throughput.json + throughput.md (the bench
# rewrites both after every row, so a cut run keeps the rows it finished), bench.log, logs/<case>.log (each runner's
# own log). Copy throughput.{json,md} to bench/results/throughput_gpu_dec05_decoders.{json,md}.
#
# Timing (estimates from bench/results/throughput_gpu_dec04_*.json: a compiled bare runner 70-90 s of which ~50 s is
# start-up + compile, the plain Trainer ~45 s, hfray ~85-110 s; a 30-layer decoder compiles longer than BERT, and
# the DPO step compiles two graphs, adapter on and off): activate ~40 s, corpus + tokenizer + Ray ~30 s, dpo ~250 s,
# sft ~220 s; so llama (third) is most likely cut. The bench is stopped at CALL_S - 15 s whatever it is doing. Two
# calls instead (same carry): WORKLOADS=dpo,sft, then WORKLOADS=llama OUT=$OUT/llama.
# Knobs (env): CALL_S (540), WORKLOADS (dpo,sft,llama), RUNNERS (bare,plain,hfray), SEQ (1024: SFT/llama block, DPO
# prompt + completion = 512 + 512), BATCH (16: sequences; DPO pairs), STEPS (40; the first 4 are warm-up), DOCS (1000),
# EXTRA (more bench flags, e.g. "--hfray-variants noliger --bare-variants eager"); SMOKE=1: a CPU dry run (--smoke).
set -uo pipefail
OUT=${OUT:-bench/results/gpu_run18}
mkdir -p "$OUT/logs"
CALL_S=${CALL_S:-540}
if [ "${SMOKE:-0}" != 1 ]; then
  source .devbundle/activate.sh || { echo "activate failed"; exit 1; }
fi
export PYTHONPATH=$PWD/lib:$PWD/.devmin${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
{
  date -u +%FT%TZ
  echo "activate took ${SECONDS}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  lscpu | grep -E '^(Model name|CPU\(s\)):'
  python3 -c 'import sys, torch, transformers, peft, trl, ray; print("python", sys.version.split()[0], "torch",
torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__,
"trl", trl.__version__, "ray", ray.__version__)'
  python3 -c 'import liger_kernel' 2>/dev/null && echo "liger-kernel importable" || echo "liger-kernel NOT importable"
} 2>&1 | tee "$OUT/versions.txt"

WORK=${WORK:-/tmp/tp18}  # corpus, tokenizer, runs and checkpoints stay on the machine; the table goes to $OUT
rm -rf "$WORK"
args=(--out "$WORK" --workloads "${WORKLOADS:-dpo,sft,llama}" --runners "${RUNNERS:-bare,plain,hfray}" --gpus 1
      --seq "${SEQ:-1024}" --batch "${BATCH:-16}" --steps "${STEPS:-40}" --docs "${DOCS:-1000}")
[ "${SMOKE:-0}" = 1 ] && args+=(--smoke)
left=$((CALL_S - 15 - SECONDS))
echo "bench: ${left}s left; python3 bench/throughput_bench.py ${args[*]} ${EXTRA:-}" | tee -a "$OUT/versions.txt"
# Its own process group, so that the runner it has started (a subprocess) is stopped with it at the deadline.
group=$(command -v setsid || true)
$group python3 bench/throughput_bench.py "${args[@]}" ${EXTRA:-} > "$OUT/bench.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt $((CALL_S - 15)) ]; do sleep 2; done
if kill -0 "$pid" 2>/dev/null; then
  echo "deadline: stopping the bench at ${SECONDS}s" | tee -a "$OUT/versions.txt"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; sleep 3; kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
fi
wait "$pid" 2>/dev/null; echo "bench exit $? at ${SECONDS}s" | tee -a "$OUT/versions.txt"
cp "$WORK"/throughput.json "$WORK"/throughput.md "$OUT/" 2>/dev/null || echo "no table written" | tee -a "$OUT/versions.txt"
for log in "$WORK"/cases/*/log.txt; do [ -f "$log" ] && tail -c 200000 "$log" > "$OUT/logs/$(basename "$(dirname "$log")").log"; done
for prof in "$WORK"/cases/*/torch_profile; do  # variant tprofile: summary.json, ops.txt, trace.json.gz
  [ -d "$prof" ] && mkdir -p "$OUT/profiles" && cp -r "$prof" "$OUT/profiles/$(basename "$(dirname "$prof")")"
done
[ "${SMOKE:-0}" = 1 ] || ray stop --force > /dev/null 2>&1  # the GPU machine's own; never on a shared CPU box
grep -E '^\{"workload"' "$OUT/bench.log" | cut -c1-400
cat "$OUT/throughput.md" 2>/dev/null
