#!/usr/bin/env bash
# the default job end to end, precision fp32 (the old default) vs auto (bf16 autocast on this AMX CPU), alternating
# Run from the repo root under the bench lock: flock /tmp/hfray-bench.lock bash bench/default_job_precision_ab.sh
# (hfray installed in /work/main/.venv; runs under /tmp/lead/ab_*). Results: bench/results/default_job_e2e_cpu_dec05_bf16.md
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /tmp
for i in 1 2; do
  for p in fp32 auto; do
    d=/tmp/lead/ab_${p}_$i; rm -rf $d
    uptime
    /usr/bin/time -f "ELAPSED %e s" /work/main/.venv/bin/hfray train --fresh storage.path=$d training.precision=$p > $d.log 2>&1
    echo "$p $i $(grep ELAPSED $d.log) $(grep 'finished in' $d.log) $(grep 'final:' $d.log)"
    /work/main/.venv/bin/python -c "
import json,glob; m=json.load(open(glob.glob('$d/*/artifact/hfray_manifest.json')[0]))
t={e['phase']:e['s'] for e in m['timeline'] if e['role']=='rank0'}
print('  model', m['model'], 'steady', m['throughput']['steady_state'].get('steady_step_seconds'), 'first_step_end', t.get('first_step_end'))"
  done
done
