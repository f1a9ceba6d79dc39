#!/usr/bin/env bash
# Stages what tests/gpu/test_grpo_gpu.py needs on the GPU machine beyond .devbundle: bitsandbytes (QLoRA) as a
# wheel in .devbnb/ (43 MB: it travels in a call of its own), plus the SmolLM2 GGUF halves and .devassets that
# bench/peft_device_assets.sh writes. Run here, from the repo root:
#
#   bash ../shared/device/bundle.sh && PYTHON=.venv/bin/python bash bench/peft_device_assets.sh
#   bash bench/grpo_device_assets.sh
#
# Then, with the device tool (kind nvidia-h200, one warm machine; /tmp survives between calls while it is held):
#   1. carry [".devbundle"]:  source .devbundle/activate.sh && python3 -c "import ray, trl"
#   2. carry [".devsmol-a"]:  mkdir -p /tmp/smol && cp .devsmol-a/part-aa /tmp/smol/
#   3. carry [".devbnb"]:     python3 -m pip install -q --no-index --no-deps --target /tmp/site .devbnb/*.whl
#   4. carry [".devsmol-b", ".devassets"], timeout_s 600:
#        cat /tmp/smol/part-aa .devsmol-b/part-ab > /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf;
#        export PYTHONPATH=/tmp/site:$PWD/lib:$PWD/.devassets PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
#        HFRAY_SMOLLM2_GGUF=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf HF_HUB_OFFLINE=1;
#        HFRAY_BENCH_OUT=$OUT python3 -m pytest -m gpu tests/gpu/test_grpo_gpu.py -x -q 2>&1 | tail -40
#   $OUT/grpo_gpu.json and grpo_gpu.md then go to bench/results/.
set -euo pipefail
PY=${PYTHON:-python3}
mkdir -p .devbnb
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d .devbnb "bitsandbytes==0.50.2"
du -sh .devbnb
