"""Request bodies of the classification API, validated in the ingress replica before anything reaches a model.

Every client mistake is a 4xx whose JSON ``detail`` has ``field`` (the offending key) and ``error``.
"""

# No "from __future__ import annotations": FastAPI reads these models' annotations at run time.

import json
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from hfray.serving.config import ServeConfig


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] = Field(description="One text or a list of texts.")
    top_k: StrictInt = Field(1, ge=1, description="Labels per input, best first (capped at the label count).")
    model: StrictStr | None = Field(None, description="Model id from GET /v1/models; default: the server's.")


class Prediction(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    results: list[list[Prediction]]


def bad_request(status: int, field: str, error: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field, "error": error})


def first_problem(exc: ValidationError) -> HTTPException:
    """The most specific problem as a 4xx naming the field, e.g. ``inputs[1]`` for a number in the list."""

    def where(err: Any) -> list[Any]:
        # Pydantic names union branches ("list[str]", "str") in the location; users only know their keys.
        return [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int")))]

    err = max(exc.errors(), key=lambda e: len(where(e)))  # the branch that got furthest into the value
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where(err)).lstrip(".") or "body"
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return bad_request(422, field, f"{field}: {message}")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes even when the client sends no Content-Length."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise bad_request(413, "body", f"body: {declared} bytes is more than the {limit} allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise bad_request(413, "body", f"body: more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_classify(raw: bytes, cfg: ServeConfig) -> tuple[list[str], int, str | None]:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(400, "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(422, "body", "body: expected a JSON object with 'inputs'")
    try:
        req = ClassifyRequest.model_validate(body)  # strict types: "2" is not a top_k, 3 is not a text
    except ValidationError as exc:
        raise first_problem(exc) from None
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise bad_request(422, "inputs", "inputs: give at least one text")
    if len(texts) > cfg.max_inputs:
        raise bad_request(413, "inputs", f"inputs: {len(texts)} texts; at most {cfg.max_inputs} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise bad_request(422, f"inputs[{i}]", f"inputs[{i}]: text is empty")
        if len(text) > cfg.max_text_chars:
            raise bad_request(413, f"inputs[{i}]", f"inputs[{i}]: {len(text)} characters; at most {cfg.max_text_chars}")
    if req.top_k > cfg.max_top_k:
        raise bad_request(422, "top_k", f"top_k: at most {cfg.max_top_k}")
    return texts, req.top_k, req.model
