"""Request bodies of the HTTP API, validated in the ingress replica before anything reaches a model.

The models come from :mod:`hfray.serving.replica.contract` (the same ones ``/openapi.json`` states). Every
client mistake is a 4xx whose JSON ``detail`` has ``field`` (the offending key) and ``error``.
"""

# No "from __future__ import annotations": FastAPI reads these models' annotations at run time.

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from hfray.serving.catalog import ArtifactCatalog, ModelEntry, ModelIdError

Model = TypeVar("Model", bound=BaseModel)

# Union branches pydantic names in an error's location; users only know their own keys.
_BRANCHES = ("str", "int", "bool", "constrained-str", "constrained-int")
# Over a size limit: 413, as for an oversized body. A malformed model id: 400, as the catalog answers.
_STATUS = {"string_too_long": 413, "too_long": 413}
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "string_unicode": "not valid Unicode text (a lone surrogate cannot be encoded)",
    "string_too_short": "text is empty",
}


def bad_request(status: int, field: str, error: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field, "error": error})


def first_problem(exc: ValidationError) -> HTTPException:
    """The most specific problem as a 4xx naming the field, e.g. ``inputs[1]`` for a number in the list."""

    def where(err: Any) -> list[Any]:
        return [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _BRANCHES))]

    # The branch that got furthest into the value; at equal depth, a broken rule beats a wrong type, and a
    # misspelt key ("inputs" for "input") beats the missing one it stands for.
    err = max(
        exc.errors(), key=lambda e: (len(where(e)), not e["type"].endswith("_type"), e["type"] == "extra_forbidden")
    )
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where(err)).lstrip(".") or "body"
    message = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
    status = _STATUS.get(err["type"], 422)
    if err["type"] == "string_pattern_mismatch" and field == "model":
        status, message = 400, "not a valid model id (a folder name, no '/' or '..')"
    elif err["type"] == "string_pattern_mismatch":
        message = "text is empty (only spaces)"
    return bad_request(status, field, f"{field}: {message}")


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


def parse_body(raw: bytes, model: type[Model], required: str = "", alternative: str = "") -> Model:
    """``raw`` JSON validated by ``model`` (strict types: "2" is not a top_k, 3 is not a text), or a 4xx naming the
    first offending field; ``required`` and ``alternative`` complete the message for a body that is no object."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(400, "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        wanted = f" with '{required}'" if required else ""
        raise bad_request(422, "body", f"body: expected a JSON object{wanted}{alternative}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise first_problem(exc) from None


def texts_of(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def task_entry(catalog: ArtifactCatalog, model_id: str, tasks: tuple[str, ...], route: str) -> ModelEntry:
    """The catalog entry of ``model_id``, or a 4xx naming ``model``: unknown id (404), malformed (400), or a
    model whose task ``route`` does not serve (422)."""
    try:
        entry = catalog.resolve(model_id)
    except ModelIdError as exc:
        raise bad_request(exc.status, "model", str(exc)) from None
    task = entry.manifest.get("task", "text-classification")
    if task not in tasks:
        raise bad_request(422, "model", f"model: {model_id!r} is a {task} model; {route} serves {', '.join(tasks)}")
    return entry
