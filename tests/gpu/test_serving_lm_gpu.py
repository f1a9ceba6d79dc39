"""LM serving on a CUDA GPU: SmolLM2-135M-Instruct in bf16 answers the ``openai`` client as local ``generate`` does,
and the static KV cache (compiled decoding) gives the dynamic cache's greedy tokens.

Run on the GPU machine with ``python -m pytest -m gpu tests/gpu/test_serving_lm_gpu.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

pytestmark = pytest.mark.gpu
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hfray.model.builtin import resolve_model

    dest = tmp_path_factory.mktemp("gpu-lm") / "smollm2"
    dest.mkdir()
    for f in Path(resolve_model("builtin:smollm2-135m-instruct")).iterdir():
        os.symlink(f, dest / f.name)
    write_manifest(str(dest), {"format": 1, "name": "smollm2", "metrics": {}, "task": "text-generation"})
    return dest


@pytest.fixture(scope="module")
def server(ray_cluster: Any, smollm2: Path) -> Iterator[str]:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    cfg = ServeConfig(artifact_root=str(smollm2.parent), port=free_port(), num_gpus=1, num_cpus=1)
    try:
        url = serve_artifacts(cfg)
        wait_healthy(url, timeout_s=300)
        yield url
    finally:
        serve.shutdown()


def local_chat(path: Path, max_new_tokens: int, dtype: str = "bfloat16", **generate: Any) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to("cuda").eval()
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_tensors="pt").to("cuda")
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **generate
    )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_bf16_chat_over_http_equals_local_generate(server: str, smollm2: Path) -> None:
    from openai import OpenAI

    oai = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    got = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=24)
    want = local_chat(smollm2, 24)
    assert got.choices[0].message.content == want
    assert want.strip()
    stream = oai.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=24, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want


def test_static_cache_gives_the_dynamic_cache_tokens(smollm2: Path) -> None:
    """fp32: compiled and eager kernels differ in the last bits; bf16 could flip a near-tie token."""
    static = local_chat(smollm2, 24, "float32", cache_implementation="static")
    assert static == local_chat(smollm2, 24, "float32")
