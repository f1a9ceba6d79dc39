"""Streaming on the replica's ``LMHost`` (no Ray, no HTTP): the pieces reach the event loop without a thread hop per
token (issue 21), join to ``generate``'s answer, and a stream its client closed stops decoding."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hfray.artifacts.manifest import write_manifest
from hfray.serving.config import ServeConfig

MAX_POSITIONS = 4096


@pytest.fixture(scope="module")
def chat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hfray.model.builtin import resolve_model

    root = tmp_path_factory.mktemp("lmstream") / "artifacts"
    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "chat")
    tok.save_pretrained(root / "chat")
    write_manifest(str(root / "chat"), {"format": 1, "name": "chat", "metrics": {}, "task": "text-generation"})
    return root


def test_streamed_pieces_join_to_the_generated_answer(chat_root: Path) -> None:
    from transformers import AutoTokenizer

    from hfray.serving.replica.generation import LMHost

    host = LMHost(ServeConfig(artifact_root=str(chat_root), max_new_tokens=64))
    prompt = AutoTokenizer.from_pretrained(chat_root / "chat")("The sky is")["input_ids"]
    opts = {"max_new_tokens": 40, "min_new_tokens": 40, "do_sample": False}

    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        pieces = [p async for p in host.stream("chat", prompt, opts)]
        return pieces, await host.generate("chat", prompt, opts)

    pieces, whole = asyncio.run(scenario())
    texts, last = pieces[:-1], pieces[-1]
    assert all(isinstance(t, str) and t for t in texts) and len(texts) > 1
    assert "".join(texts) == whole["text"]
    assert last == {k: v for k, v in whole.items() if k != "text"} and last["completion_tokens"] == 40


def test_a_closed_stream_stops_decoding(chat_root: Path) -> None:
    """The client went away after the first piece: its generate stops at the next token (it held the replica's lock
    for every other request until the last of its tokens before)."""
    from transformers import AutoTokenizer

    from hfray.serving.replica.generation import LMHost

    host = LMHost(ServeConfig(artifact_root=str(chat_root), max_new_tokens=MAX_POSITIONS))
    prompt = AutoTokenizer.from_pretrained(chat_root / "chat")("The sky is")["input_ids"]
    asked = MAX_POSITIONS - len(prompt) - 1
    opts = {"max_new_tokens": asked, "min_new_tokens": asked, "do_sample": False}
    forwards: list[int] = []

    async def scenario() -> None:
        stream = host.stream("chat", prompt, opts)
        assert isinstance(await anext(stream), str)
        host.full["chat"].register_forward_pre_hook(lambda *_: forwards.append(1))  # loaded by now
        await stream.aclose()
        await asyncio.to_thread(host.lock.acquire)  # the decoding thread has let go
        host.lock.release()

    asyncio.run(scenario())
    assert len(forwards) < asked // 2  # stopped, not decoded to the end
