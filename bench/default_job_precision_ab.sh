#!/usr/bin/env bash
# The embedded default job end to end, training.precision fp32 (the CPU default before 0d9bcf6) against auto (bf16
# autocast on a CPU with AMX / AVX512-BF16), alternating, each on its own local cluster that hfray starts.
# From the repo root, under the bench lock:
#   flock /tmp/hfray-bench.lock bash bench/default_job_precision_ab.sh
# Knobs (env): OUT (/tmp/hfray_precision_ab: runs and logs), ROUNDS (2), HFRAY (.venv/bin/hfray of this repo).
# Results: bench/results/default_job_e2e_cpu_dec05_bf16.md.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HFRAY=${HFRAY:-$ROOT/.venv/bin/hfray}
PYTHON=$(dirname "$HFRAY")/python
OUT=${OUT:-/tmp/hfray_precision_ab}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /tmp  # as a user runs it: no job file, no repo on the path
for i in $(seq "${ROUNDS:-2}"); do
  for p in fp32 auto; do
    d=$OUT/${p}_$i
    rm -rf "$d"
    uptime
    /usr/bin/time -f "ELAPSED %e s" "$HFRAY" train --fresh storage.path="$d" training.precision=$p > "$d.log" 2>&1
    echo "$p $i $(grep ELAPSED "$d.log") $(grep 'finished in' "$d.log") $(grep 'final:' "$d.log")"
    "$PYTHON" - "$d" <<'PY'
import glob, json, sys
m = json.load(open(glob.glob(f"{sys.argv[1]}/*/artifact/hfray_manifest.json")[0]))
rank0 = {e["phase"]: e["s"] for e in m["timeline"] if e["role"] == "rank0"}
steady = m["throughput"]["steady_state"].get("steady_step_seconds")
print("  model", m["model"], "steady", steady, "first_step_end", rank0.get("first_step_end"))
PY
  done
done
