"""The language-model routes, in the ingress replica: checks, chat template, OpenAI response shapes, SSE.

::

    POST /v1/generate          {"inputs": str | [str], "max_new_tokens", "temperature", "top_p", "top_k", "seed",
                                "stream", "model"} -> {"model", "results": [{"generated_text", "prompt_tokens",
                                "completion_tokens", "finish_reason"}]}; stream: SSE {"text"} ... {"done": true, ...}
    POST /v1/chat/completions  OpenAI chat completions (the artifact's chat template renders the messages)
    POST /v1/completions       OpenAI completions
    POST /v1/fill-mask         {"inputs": str | [str], "top_k": 5, "model"} -> results as pipeline("fill-mask")
    GET  /v1/lm/stats          what the answering LM replica holds: bases, adapters, parameters

The ingress tokenizes (its tokenizers are small next to the models), so that a prompt over
``max_prompt_tokens`` or over the model's context is a 413/422 before any model decodes; the models
(:class:`~hfray.serving.replica.generation.LMHost`) get token ids and return text. As for classifiers
(``ServeConfig.topology``): ``fused`` holds the LMHost in the ingress replica itself, ``split`` calls
:class:`~hfray.serving.replica.generation.HfrayLM` replicas through a handle.
"""

# No "from __future__ import annotations": FastAPI reads annotations of what the ingress returns at run time.

import asyncio
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from ray.serve.handle import DeploymentHandle

from hfray.serving.catalog import ArtifactCatalog, ModelEntry
from hfray.serving.config import ServeConfig
from hfray.serving.replica.generation import LMHost
from hfray.serving.replica.lm_requests import (
    ChatRequest,
    CompletionRequest,
    FillMaskRequest,
    GenerateRequest,
    OpenAIRequest,
    options,
)
from hfray.serving.replica.requests import bad_request, parse_body, task_entry

GENERATION_TASKS = ("text-generation",)
LM_TASKS = (*GENERATION_TASKS, "fill-mask")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def serves_lm(entries: list[ModelEntry]) -> bool:
    """Whether an artifact root holds models for these routes (the LM deployment is added only then)."""
    return any(e.manifest.get("task") in LM_TASKS for e in entries)


def sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class LMRoutes:
    """What the ingress does for the LM routes; the ingress registers the routes and hands over the body."""

    def __init__(self, cfg: ServeConfig, catalog: ArtifactCatalog, default_model: str, lm: DeploymentHandle | None):
        self.cfg, self.catalog, self.default_model, self.lm = cfg, catalog, default_model, lm
        fused = lm is None and cfg.topology == "fused" and serves_lm(catalog.entries())
        self.host = LMHost(cfg) if fused else None  # fused: the models live in this replica
        self.tokenizers: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # model path -> (tokenizer, context)

    def hidden(self) -> set[str]:
        """The LM routes ``/openapi.json`` leaves out: those no served artifact's task answers (a client reading
        the contract of a classification server should not be told it can generate)."""
        tasks = {e.manifest.get("task") for e in self.catalog.entries()}
        out = set() if tasks & set(GENERATION_TASKS) else {"/v1/generate", "/v1/chat/completions", "/v1/completions"}
        out |= set() if "fill-mask" in tasks else {"/v1/fill-mask"}
        return out | (set() if tasks & set(LM_TASKS) else {"/v1/lm/stats"})

    # ------------------------------------------------------------------------- shared checks

    def entry(self, model: str | None, tasks: tuple[str, ...], route: str) -> ModelEntry:
        entry = task_entry(self.catalog, model or self.default_model, tasks, route)
        if self.lm is None and self.host is None:  # an LM artifact that appeared after this replica started
            raise bad_request(422, "model", f"model: {entry.model_id!r}: restart the server to serve its LM routes")
        return entry

    def tokenizer(self, entry: ModelEntry) -> tuple[Any, int]:
        """The artifact's tokenizer and its model's context length (positions), kept for the 16 latest."""
        from transformers import AutoConfig, AutoTokenizer

        cached = self.tokenizers.get(entry.path)
        if cached is None:
            base = os.path.join(entry.path, "base")
            config = AutoConfig.from_pretrained(base if os.path.isdir(base) else entry.path)
            context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            cached = (AutoTokenizer.from_pretrained(entry.path), int(context or 1 << 30))
            self.tokenizers[entry.path] = cached
            while len(self.tokenizers) > 16:
                self.tokenizers.popitem(last=False)
        self.tokenizers.move_to_end(entry.path)
        return cached

    def _texts(self, inputs: str | list[str], field: str) -> list[str]:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not texts:
            raise bad_request(422, field, f"{field}: give at least one text")
        if len(texts) > self.cfg.max_inputs:
            raise bad_request(413, field, f"{field}: {len(texts)} texts; at most {self.cfg.max_inputs} per request")
        for i, text in enumerate(texts):
            where = field if isinstance(inputs, str) else f"{field}[{i}]"
            if len(text) > self.cfg.max_text_chars:
                raise bad_request(413, where, f"{where}: {len(text)} characters; at most {self.cfg.max_text_chars}")
        return texts

    def budget(self, prompt: list[int], context: int, asked: int | None, field: str, default: int) -> int:
        """New tokens for a prompt: as asked, within the server's limit and the model's context."""
        if not prompt:
            raise bad_request(422, "prompt", "prompt: empty after tokenizing")
        if len(prompt) > min(self.cfg.max_prompt_tokens, context - 1):
            limit = min(self.cfg.max_prompt_tokens, context - 1)
            raise bad_request(413, "prompt", f"prompt: {len(prompt)} tokens; at most {limit} for this model")
        if asked is not None and asked > self.cfg.max_new_tokens:
            raise bad_request(422, field, f"{field}: {asked}; at most {self.cfg.max_new_tokens}")
        room = context - len(prompt)
        if asked is not None and asked > room:
            error = f"{field}: {asked} new tokens after a {len(prompt)}-token prompt exceed the context {context}"
            raise bad_request(422, field, error)
        return asked if asked is not None else min(default, self.cfg.max_new_tokens, room)

    def _check_stream(self, stream: bool, n: int, field: str) -> None:
        if stream and n != 1:
            raise bad_request(422, field, f"{field}: streaming answers one prompt; got {n}")

    # ------------------------------------------------------------------------- /v1/generate

    async def generate(self, raw: bytes) -> Any:
        req = parse_body(raw, GenerateRequest)
        entry = self.entry(req.model, GENERATION_TASKS, "/v1/generate")
        texts = self._texts(req.inputs, "inputs")
        self._check_stream(req.stream, len(texts), "inputs")
        tok, context = self.tokenizer(entry)
        prompts = [tok(t)["input_ids"] for t in texts]
        limit = self.cfg.max_new_tokens
        budgets = [self.budget(p, context, req.max_new_tokens, "max_new_tokens", limit) for p in prompts]
        opts = [options(req, b, req.top_k) for b in budgets]
        if req.stream:
            return self._sse(self._generate_events(entry.model_id, prompts[0], opts[0]))
        results = await self._generate_all(entry.model_id, prompts, opts)
        return {"model": entry.model_id, "results": [{"generated_text": r.pop("text"), **r} for r in results]}

    async def _generate_events(self, model_id: str, prompt: list[int], opts: dict[str, Any]) -> AsyncIterator[str]:
        async for piece in self._pieces(model_id, prompt, opts):
            yield sse({"text": piece} if isinstance(piece, str) else {"done": True, **piece})

    # ------------------------------------------------------------------------- OpenAI

    async def chat(self, raw: bytes) -> Any:
        req = parse_body(raw, ChatRequest)
        entry = self.entry(req.model, GENERATION_TASKS, "/v1/chat/completions")
        tok, context = self.tokenizer(entry)
        if not tok.chat_template:
            raise bad_request(422, "model", f"model: {entry.model_id!r} has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        asked = req.max_completion_tokens or req.max_tokens
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        opts = options(req, self.budget(prompt, context, asked, field, self.cfg.max_new_tokens))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": entry.model_id}
        if req.stream:
            return self._sse(self._chat_events(head, req, prompt, opts))
        r = await self._call("generate", entry.model_id, prompt, opts)
        message = {"role": "assistant", "content": r["text"]}
        choice = {"index": 0, "message": message, "finish_reason": r["finish_reason"], "logprobs": None}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(r)}

    async def _chat_events(
        self, head: dict[str, Any], req: OpenAIRequest, prompt: list[int], opts: dict[str, Any]
    ) -> AsyncIterator[str]:
        chunk = {**head, "object": "chat.completion.chunk"}
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        yield sse({**chunk, "choices": [first]})
        async for piece in self._pieces(head["model"], prompt, opts):
            if isinstance(piece, str):
                delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}
                yield sse({**chunk, "choices": [delta]})
                continue
            yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": piece["finish_reason"]}]})
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(piece)})
        yield sse("[DONE]")

    async def completions(self, raw: bytes) -> Any:
        req = parse_body(raw, CompletionRequest)
        entry = self.entry(req.model, GENERATION_TASKS, "/v1/completions")
        texts = self._texts(req.prompt, "prompt")
        self._check_stream(req.stream, len(texts), "prompt")
        tok, context = self.tokenizer(entry)
        prompts = [tok(t)["input_ids"] for t in texts]
        default = COMPLETIONS_DEFAULT_MAX_TOKENS
        opts = [options(req, self.budget(p, context, req.max_tokens, "max_tokens", default)) for p in prompts]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": entry.model_id}
        if req.stream:
            return self._sse(self._completion_events(head, req, prompts[0], opts[0]))
        results = await self._generate_all(entry.model_id, prompts, opts)
        choices = [
            {"index": i, "text": r["text"], "finish_reason": r["finish_reason"], "logprobs": None}
            for i, r in enumerate(results)
        ]
        total = {k: sum(usage(r)[k] for r in results) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return {**head, "object": "text_completion", "choices": choices, "usage": total}

    async def _completion_events(
        self, head: dict[str, Any], req: OpenAIRequest, prompt: list[int], opts: dict[str, Any]
    ) -> AsyncIterator[str]:
        chunk = {**head, "object": "text_completion"}
        async for piece in self._pieces(head["model"], prompt, opts):
            if isinstance(piece, str):
                yield sse({**chunk, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]})
                continue
            last = {"index": 0, "text": "", "finish_reason": piece["finish_reason"], "logprobs": None}
            yield sse({**chunk, "choices": [last]})
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(piece)})
        yield sse("[DONE]")

    # ------------------------------------------------------------------------- fill-mask, stats

    async def fill_mask(self, raw: bytes) -> dict[str, Any]:
        req = parse_body(raw, FillMaskRequest)
        entry = self.entry(req.model, ("fill-mask",), "/v1/fill-mask")
        texts = self._texts(req.inputs, "inputs")
        if req.top_k > self.cfg.max_top_k:
            raise bad_request(422, "top_k", f"top_k: at most {self.cfg.max_top_k}")
        tok, _ = self.tokenizer(entry)
        for i, text in enumerate(texts):
            if tok.mask_token not in text:
                where = "inputs" if isinstance(req.inputs, str) else f"inputs[{i}]"
                raise bad_request(422, where, f"{where}: no {tok.mask_token} token to fill")
        results = await self._call("fill_mask", entry.model_id, texts, req.top_k)
        return {"model": entry.model_id, "results": results}

    async def stats(self) -> dict[str, Any]:
        if self.host is not None:
            return self.host.stats()
        if self.lm is None:
            raise bad_request(404, "model", "model: this server holds no language models")
        return await self.lm.stats.remote()

    # ------------------------------------------------------------------------- streaming

    async def _generate_all(self, model_id: str, prompts: list[list[int]], opts: list[dict[str, Any]]) -> list[Any]:
        """One call per prompt, all at once: the replica batches them (``LMHost.generate``)."""
        calls = [self._call("generate", model_id, p, o) for p, o in zip(prompts, opts, strict=True)]
        return list(await asyncio.gather(*calls))

    async def _call(self, method: str, *args: Any) -> Any:
        """``method`` of the LM host in this replica (fused), or of an HfrayLM replica (split)."""
        if self.host is not None:
            return await getattr(self.host, method)(*args)
        return await getattr(self.lm, method).remote(*args)

    async def _pieces(self, model_id: str, prompt: list[int], opts: dict[str, Any]) -> AsyncIterator[Any]:
        if self.host is not None:
            pieces = self.host.stream(model_id, prompt, opts)
        else:
            pieces = self.lm.options(stream=True).stream.remote(model_id, prompt, opts)
        async for piece in pieces:
            yield piece

    def _sse(self, events: AsyncIterator[str]) -> StreamingResponse:
        async def guarded() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
            except Exception as exc:  # headers are sent: the error becomes the stream's last event
                yield sse({"error": {"message": f"generation failed: {type(exc).__name__}: {exc}"}})

        return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = result["prompt_tokens"], result["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
