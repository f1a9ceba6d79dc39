"""Language models on Ray Serve over real HTTP: generation, the ``openai`` client's chat and completions (plain and
streaming), three LoRA adapters on one shared base, fill-mask, and bad input as 4xx naming the field.

The artifacts are tiny models built from a config (random weights) with real tokenizers: SmolLM2's (it has a chat
template) for the causal LMs, MiniLM's for the masked LM. What is checked is that the server answers exactly what
``transformers`` answers locally on the same folder with the same greedy settings. One Serve app serves them all.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    "initializer_range": 0.2,  # at 0.02 the random model's greedy answer is "\n" over and over
}
ADAPTERS = ("ad1", "ad2", "ad3")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour of the sky."}]
MAX_NEW = 12


def _manifest(path: Path, task: str, **fields: Any) -> None:
    write_manifest(str(path), {"format": 1, "name": path.name, "metrics": {}, "task": task, **fields})


@pytest.fixture(scope="module")
def lm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chat: a plain causal LM; ad1-3: LoRA adapters of one base kept outside the root; mlm: a masked LM."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    from hfray.model.builtin import resolve_model

    top = tmp_path_factory.mktemp("lm")
    root = top / "artifacts"
    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_LLAMA)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "chat")
    tok.save_pretrained(root / "chat")
    _manifest(root / "chat", "text-generation", training_task="sft")
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(top / "base")
    for seed, name in enumerate(ADAPTERS, start=10):
        torch.manual_seed(seed)
        lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft = get_peft_model(LlamaForCausalLM.from_pretrained(top / "base"), lora)
        peft.save_pretrained(root / name)
        config.save_pretrained(root / name / "base")
        tok.save_pretrained(root / name)
        peft_info = {"method": "lora", "base_model": str(top / "base"), "auto_class": "AutoModelForCausalLM"}
        _manifest(root / name, "text-generation", training_task="sft", peft=peft_info)
    mini = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    torch.manual_seed(3)
    bert = BertConfig(vocab_size=len(mini), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertForMaskedLM(bert).save_pretrained(root / "mlm")
    mini.save_pretrained(root / "mlm")
    _manifest(root / "mlm", "fill-mask", training_task="masked-lm")
    return root


@pytest.fixture(scope="module")
def server(ray_cluster: Any, lm_root: Path) -> Iterator[str]:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    cfg = ServeConfig(
        artifact_root=str(lm_root), default_model="chat", port=free_port(), num_cpus=0.5,
        max_new_tokens=32, max_prompt_tokens=200,
    )  # fmt: skip
    try:
        url = serve_artifacts(cfg)
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


@functools.cache
def local_model(path: Path, adapter: bool = False, merge: bool = False) -> tuple[Any, Any]:
    """The artifact's tokenizer and model, loaded by transformers (and PEFT) in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfray.artifacts.adapters import load_model

    model = load_model(str(path), merge=merge) if adapter else AutoModelForCausalLM.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path), model


def local_generate(path: Path, text: str, chat: bool, adapter: bool = False, merge: bool = False) -> tuple[str, int]:
    """transformers' greedy generate on the artifact folder: the new text and the prompt's token count."""
    tok, model = local_model(path, adapter, merge)
    if chat:
        text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=not chat, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), enc["input_ids"].shape[1]


def client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_openai_chat_plain_and_streaming_equal_local_generate(server: str, lm_root: Path) -> None:
    want, prompt_tokens = local_generate(lm_root / "chat", "", chat=True)
    assert want.strip()
    oai = client(server)
    got = oai.chat.completions.create(model="chat", messages=MESSAGES, temperature=0, max_tokens=MAX_NEW)
    assert got.choices[0].message.content == want
    assert got.choices[0].message.role == "assistant"
    # The chat template rendered the messages: the prompt is the template's tokens, not the raw text's.
    assert got.usage.prompt_tokens == prompt_tokens
    assert got.choices[0].finish_reason in ("stop", "length") and got.usage.completion_tokens <= MAX_NEW
    stream = oai.chat.completions.create(
        model="chat", messages=MESSAGES, temperature=0, max_tokens=MAX_NEW, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed in pieces, not one block
    assert "".join(pieces) == want
    assert chunks[-1].usage.completion_tokens == got.usage.completion_tokens


def test_completions_and_generate_equal_local_generate(server: str, lm_root: Path) -> None:
    prompts = ["The weather today is", "Once upon a time"]
    wants = [local_generate(lm_root / "chat", p, chat=False)[0] for p in prompts]
    oai = client(server)
    got = oai.completions.create(model="chat", prompt=prompts, temperature=0, max_tokens=MAX_NEW)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == wants
    stream = oai.completions.create(model="chat", prompt=prompts[0], temperature=0, max_tokens=MAX_NEW, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == wants[0]

    body = {"inputs": prompts, "max_new_tokens": MAX_NEW, "temperature": 0}
    plain = httpx.post(f"{server}/v1/generate", json=body, timeout=120)
    assert plain.status_code == 200, plain.text
    assert [r["generated_text"] for r in plain.json()["results"]] == wants
    events = []
    body = {"inputs": prompts[1], "max_new_tokens": MAX_NEW, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/generate", json=body, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert "".join(e.get("text", "") for e in events) == wants[1]
    assert events[-1]["done"] and events[-1]["completion_tokens"] == plain.json()["results"][1]["completion_tokens"]


def test_three_adapters_share_one_base_and_each_answers_as_itself(server: str, lm_root: Path) -> None:
    from transformers import AutoModelForCausalLM

    oai = client(server)
    answers = {}
    for name in [*ADAPTERS, "ad1"]:  # back to the first: switching is by request, not by load order
        got = oai.chat.completions.create(model=name, messages=MESSAGES, temperature=0, max_tokens=MAX_NEW)
        answers[name] = got.choices[0].message.content
        assert answers[name] == local_generate(lm_root / name, "", chat=True, adapter=True)[0], name
    assert len(set(answers.values())) == 3  # each adapter changes the model's answer its own way
    stats = httpx.get(f"{server}/v1/lm/stats", timeout=60).json()
    assert len(stats["bases"]) == 1 and sorted(stats["bases"][0]["adapters"]) == sorted(ADAPTERS)
    base = AutoModelForCausalLM.from_pretrained(lm_root.parent / "base").num_parameters()
    lora = local_model(lm_root / "ad1", adapter=True)[1].num_parameters() - base
    # One base's parameters plus three adapters', not three bases (the plain 'chat' model is held too).
    chat = local_model(lm_root / "chat")[1].num_parameters()
    assert stats["bases"][0]["parameters"] == base + 3 * lora
    assert stats["parameters"] == chat + base + 3 * lora


def test_fill_mask_equals_the_pipeline(server: str, lm_root: Path) -> None:
    from transformers import pipeline

    texts = ["the movie was [MASK] and long .", "a [MASK] story"]
    got = httpx.post(f"{server}/v1/fill-mask", json={"inputs": texts, "top_k": 3, "model": "mlm"}, timeout=120)
    assert got.status_code == 200, got.text
    want = pipeline("fill-mask", model=str(lm_root / "mlm"))
    for result, text in zip(got.json()["results"], texts, strict=True):
        expected = want(text, top_k=3)
        assert [r["token_str"] for r in result] == [e["token_str"] for e in expected]
        assert [r["score"] for r in result] == pytest.approx([e["score"] for e in expected], rel=1e-5)


@pytest.mark.parametrize(
    ("route", "body", "status", "field"),
    [
        ("chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}]}, 413, "prompt"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}, 422, "max_tokens"),
        ("chat/completions", {"model": "ad9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 422, "temperature"),
        ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages[0].role"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 422, "n"),
        ("completions", {"prompt": "hi", "top_p": 0}, 422, "top_p"),
        ("completions", {"prompt": ["a", "b"], "stream": True}, 422, "prompt"),
        ("generate", {"inputs": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ("generate", {"inputs": "hi", "model": "mlm"}, 422, "model"),
        ("fill-mask", {"inputs": "no mask here", "model": "mlm"}, 422, "inputs"),
        ("fill-mask", {"inputs": "a [MASK]"}, 422, "model"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(server: str, route: str, body: Any, status: int, field: str) -> None:
    got = httpx.post(f"{server}/v1/{route}", json=body, timeout=60)
    assert got.status_code == status, got.text
    assert got.json()["detail"]["field"] == field


def test_openapi_documents_the_lm_request_bodies(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json", timeout=60).json()["paths"]
    body = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"messages", "max_tokens", "temperature", "stream"} <= set(body["properties"])
    assert {"/v1/generate", "/v1/completions", "/v1/fill-mask"} <= set(paths)


def test_requests_arriving_while_a_batch_decodes_form_the_next_batch(lm_root: Path) -> None:
    """No Ray: the replica's LMHost. One request decodes (held at the host's lock) while three more arrive; those
    three are one batch, not three (serve.batch cut them into batches of a few milliseconds of arrivals)."""
    import asyncio

    import torch

    from hfray.serving.replica.generation import LMHost

    host = LMHost(ServeConfig(artifact_root=str(lm_root), max_new_tokens=32))
    tok, model = local_model(lm_root / "chat")
    prompts = [tok(t)["input_ids"] for t in ("The sky is", "Water is", "Grass is", "Snow is")]
    opts = {"max_new_tokens": MAX_NEW, "do_sample": False}

    async def scenario() -> list[Any]:
        host.lock.acquire()  # the first batch waits here, inside its decoding thread
        try:
            first = asyncio.create_task(host.generate("chat", prompts[0], opts))
            for _ in range(1000):
                if host.batches:
                    break
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(host.generate("chat", p, opts)) for p in prompts[1:]]
            await asyncio.sleep(0.05)  # they arrive while the first batch decodes
        finally:
            host.lock.release()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    assert (host.batches, host.batched_requests) == (2, 4)
    for prompt, result in zip(prompts, results, strict=True):  # a batch of 3, left-padded, answers as one alone
        ids = torch.tensor([prompt])
        want = model.generate(input_ids=ids, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=tok.pad_token_id)
        assert result["text"] == tok.decode(want[0, len(prompt) :], skip_special_tokens=True)


def test_hfray_serve_flags_choose_how_adapters_are_served(tmp_path: Path) -> None:
    import argparse

    from hfray.cli.serve import add_serve_arguments, config_from_args
    from hfray.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    cfg = config_from_args(parser.parse_args([str(tmp_path), "--adapters", "merged", "--max-new-tokens", "64"]))
    assert (cfg.adapters, cfg.max_new_tokens, cfg.max_adapters) == ("merged", 64, 8)
    with pytest.raises(ConfigError, match="adapters"):
        config_from_args(parser.parse_args([str(tmp_path), "--adapters", "copied"]))


@pytest.mark.slow
def test_split_topology_serves_merged_adapters(ray_cluster: Any, lm_root: Path) -> None:
    """``topology: split`` (HfrayLM replicas behind the ingress, streaming through a handle) with ``adapters:
    merged``: each adapter is its own model, answering as the local merged model does."""
    from ray import serve
    from transformers import AutoModelForCausalLM

    from hfray.serving.driver import serve_artifacts

    cfg = ServeConfig(
        artifact_root=str(lm_root), default_model="chat", port=free_port(), num_cpus=0.5, route_prefix="/split",
        topology="split", adapters="merged", max_models_per_replica=4,
    )  # fmt: skip
    serve.shutdown()  # the module's app, if it ran: a second app would not get its own port
    try:
        url = serve_artifacts(cfg, app_name="hfray-split")
        wait_healthy(url)
        oai = client(url)
        for name in ADAPTERS:
            got = oai.chat.completions.create(model=name, messages=MESSAGES, temperature=0, max_tokens=MAX_NEW)
            want = local_generate(lm_root / name, "", chat=True, adapter=True, merge=True)[0]
            assert got.choices[0].message.content == want, name
        stream = oai.chat.completions.create(
            model="ad2", messages=MESSAGES, temperature=0, max_tokens=MAX_NEW, stream=True
        )
        want = local_generate(lm_root / "ad2", "", chat=True, adapter=True, merge=True)[0]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
        stats = httpx.get(f"{url}/v1/lm/stats", timeout=60).json()
        base = AutoModelForCausalLM.from_pretrained(lm_root.parent / "base").num_parameters()
        assert stats["bases"] == [] and sorted(stats["models"]) == sorted(ADAPTERS)
        assert stats["parameters"] == 3 * base  # three merged copies of the base
    finally:
        serve.shutdown()
