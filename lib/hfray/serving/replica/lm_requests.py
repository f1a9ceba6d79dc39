"""Request bodies of the language-model routes (``/v1/generate``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/fill-mask``), checked in the ingress before anything reaches a model replica.

The OpenAI-compatible bodies accept the keys the ``openai`` client sends for the features served; keys for
features not served (``n`` > 1, ``stop``, ``logprobs``, tools) are a 422 naming the key, never silently ignored.
Every mistake is a 4xx whose JSON ``detail`` has ``field`` and ``error`` (``requests.parse_body`` validates them).
"""

# No "from __future__ import annotations": FastAPI reads these models' annotations at run time.

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class Sampling(BaseModel):
    """Sampling settings shared by every generation route; unset: the artifact's generation config."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="Model id from GET /v1/models; default: the server's.")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; > 0: sampling at this temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: the smallest set this likely.")
    seed: StrictInt | None = Field(None, description="Seeds sampling: the same seed gives the same text.")
    stream: StrictBool = Field(False, description="Server-sent events, one per decoded piece of text.")


class GenerateRequest(Sampling):
    inputs: StrictStr | list[StrictStr] = Field(description="One prompt or a list (batched; stream: one only).")
    max_new_tokens: StrictInt | None = Field(None, ge=1, description="Default: up to the server's max_new_tokens.")
    top_k: StrictInt | None = Field(None, ge=1, description="Sample from the k most likely tokens only.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class OpenAIRequest(Sampling):
    """Keys both OpenAI routes share: unsupported features may only be sent at their neutral value."""

    max_tokens: StrictInt | None = Field(None, ge=1, description="Most new tokens.")
    n: Literal[1] = Field(1, description="One choice per prompt.")
    stop: None = Field(None, description="Not supported: the model's end-of-sequence token stops generation.")
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    presence_penalty: Literal[0, 0.0] | None = None
    frequency_penalty: Literal[0, 0.0] | None = None


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation; the chat template renders it.")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, description="Most new tokens (newer name).")
    logprobs: Literal[False] | None = None


class CompletionRequest(OpenAIRequest):
    prompt: StrictStr | list[StrictStr] = Field(description="One prompt or a list (stream: one only).")
    echo: Literal[False] | None = None
    logprobs: None = None


class FillMaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] = Field(description="Texts with the model's mask token, e.g. [MASK].")
    top_k: StrictInt = Field(5, ge=1, description="Tokens per mask, most likely first.")
    model: StrictStr | None = None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body by hand: the body's schema in the OpenAPI docs."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


# The routes' bodies, for their OpenAPI docs (hfray.serving.replica.ingress registers the routes).
BODIES = {
    "generate": body_schema(GenerateRequest),
    "chat": body_schema(ChatRequest),
    "completions": body_schema(CompletionRequest),
    "fill-mask": body_schema(FillMaskRequest),
}


def options(req: Sampling, max_new_tokens: int, top_k: int | None = None) -> dict[str, Any]:
    """``generate`` keyword arguments: greedy at temperature 0, sampling above, the model's defaults when unset."""
    opts: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if req.temperature == 0:
        return {**opts, "do_sample": False, **({"seed": req.seed} if req.seed is not None else {})}
    if req.temperature is not None:
        opts.update(do_sample=True, temperature=req.temperature)
    extra = {"top_p": req.top_p, "top_k": top_k, "seed": req.seed}
    return {**opts, **{k: v for k, v in extra.items() if v is not None}}
