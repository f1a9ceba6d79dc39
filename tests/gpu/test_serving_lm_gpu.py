"""LM serving on a CUDA GPU: a SmolLM2-135M-shaped model in bf16 answers chat turns over HTTP (plain and SSE) as
local ``generate`` does, and the static KV cache (compiled decoding) gives the dynamic cache's greedy tokens.

The model is SmolLM2-135M-Instruct when its weights are there (``builtin:smollm2-135m-instruct``: the pip package,
``$HFRAY_SMOLLM2_GGUF`` or an earlier conversion); else its architecture built from the config with random weights
(seed 0) and SmolLM2's real tokenizer + chat template from ``$HFRAY_SMOLLM2_TOKENIZER`` (default
``.devmin/smollm2_tokenizer``, staged by ``bench/device_assets.sh``), since the weights (94 MB) do not fit a device
call beside ``.devbundle`` (``HFRAY_SMOLLM2_RANDOM=1`` forces them). The checks are equalities, so random weights
test the same code.

Run on the GPU machine with ``python -m pytest -m gpu tests/gpu/test_serving_lm_gpu.py`` (``bench/gpu_lm_serve21.sh``
runs it after the benchmark). ``HFRAY_GPU_TESTS_DEVICE=cpu`` runs the same checks on CPU (a dry run of the harness).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("HFRAY_GPU_TESTS_DEVICE", "cuda")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2_SHAPE = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "initializer_range": 0.2,  # peaked logits: at 0.02 near-ties could flip between compiled and eager kernels
}  # fmt: skip


def random_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(os.environ.get("HFRAY_SMOLLM2_TOKENIZER", ROOT / ".devmin/smollm2_tokenizer"))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **ids, **SMOLLM2_SHAPE)).to(torch.bfloat16).save_pretrained(dest)
    tok.save_pretrained(dest)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hfray.errors import HfrayError
    from hfray.model.builtin import resolve_model

    dest = tmp_path_factory.mktemp("gpu-lm") / "smollm2"
    dest.mkdir()
    try:
        if os.environ.get("HFRAY_SMOLLM2_RANDOM") == "1":
            raise HfrayError("HFRAY_SMOLLM2_RANDOM=1")
        for f in Path(resolve_model("builtin:smollm2-135m-instruct")).iterdir():
            os.symlink(f, dest / f.name)
        print("model: SmolLM2-135M-Instruct (real weights)")
    except HfrayError as exc:
        print(f"model: SmolLM2-135M architecture, random weights ({exc})")
        random_smollm2(dest)
    write_manifest(str(dest), {"format": 1, "name": "smollm2", "metrics": {}, "task": "text-generation"})
    return dest


@pytest.fixture(scope="module")
def server(ray_cluster: Any, smollm2: Path) -> Iterator[str]:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    gpus = 1 if DEVICE == "cuda" else 0
    cfg = ServeConfig(artifact_root=str(smollm2.parent), port=free_port(), num_gpus=gpus, num_cpus=1, dtype="bf16")
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
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(DEVICE).eval()
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_tensors="pt").to(DEVICE)
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **generate
    )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def streamed_text(url: str, body: dict[str, Any]) -> str:
    """The concatenated ``delta.content`` of an OpenAI-style SSE stream (the GPU machine has no ``openai`` client)."""
    pieces = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                pieces += [c["delta"].get("content") or "" for c in event.get("choices", [])]
    return "".join(pieces)


def test_bf16_chat_over_http_equals_local_generate(server: str, smollm2: Path) -> None:
    body = {"model": "smollm2", "messages": MESSAGES, "temperature": 0, "max_tokens": 24}
    r = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    want = local_chat(smollm2, 24)
    assert r.json()["choices"][0]["message"]["content"] == want
    assert want.strip(), "an empty answer would make the equality trivial"
    assert streamed_text(server, body) == want


def test_static_cache_gives_the_dynamic_cache_tokens(smollm2: Path) -> None:
    """fp32: compiled and eager kernels differ in the last bits; bf16 could flip a near-tie token."""
    static = local_chat(smollm2, 24, "float32", cache_implementation="static")
    assert static == local_chat(smollm2, 24, "float32")
