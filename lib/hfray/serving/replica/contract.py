"""The HTTP API's contract: the request models the ingress validates with, built from the serving limits, and
the OpenAPI document that states exactly them, with every error status and its body.

``/openapi.json`` is generated per replica from these same models (``openapi``), so a client (or
schemathesis) sees ``maxLength`` = ``max_text_chars``, ``maxItems`` = ``max_inputs`` and so on: whatever the
schema allows is accepted, whatever it forbids is a 4xx whose ``detail`` names the field.
"""

# No "from __future__ import annotations": pydantic's create_model reads these annotations at run time.

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from hfray.serving.config import MODEL_ID, ServeConfig

# A text needs one non-space character: " " is as empty as "" to a classifier.
NON_BLANK = r"\S"


class ErrorDetail(BaseModel):
    field: str = Field(description="The offending key: 'inputs[1]', 'top_k', 'model', 'body', 'Authorization'.")
    error: str = Field(description="What is wrong, starting with the field's name.")


class ErrorResponse(BaseModel):
    detail: ErrorDetail


class Prediction(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    results: list[list[Prediction]] = Field(description="One list per input, top_k labels each, best first.")


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[Embedding] = Field(description="One per input, in input order (OpenAI's embeddings shape).")


def whole_number(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0, never true, "3" or 3.5 (pydantic's strict mode refuses 3.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a whole number")
    return value


def text_type(cfg: ServeConfig) -> Any:
    return Annotated[
        str, Field(strict=True, min_length=1, max_length=cfg.max_text_chars, pattern=NON_BLANK, description="A text.")
    ]


def inputs_type(cfg: ServeConfig) -> Any:
    text = text_type(cfg)
    return text | Annotated[list[text], Field(min_length=1, max_length=cfg.max_inputs)]  # type: ignore[valid-type]


def model_field() -> Any:
    return Field(None, pattern=MODEL_ID.pattern, description="Model id from GET /v1/models; default: the server's.")


def request_models(cfg: ServeConfig) -> dict[str, type[BaseModel]]:
    """The request body models for ``cfg``'s limits, by route; the ingress validates with these."""
    forbid = ConfigDict(extra="forbid")
    classify = create_model(
        "ClassifyRequest",
        __config__=forbid,
        inputs=(inputs_type(cfg), Field(description="One text or a list of texts.")),
        top_k=(
            Annotated[Annotated[int, Field(ge=1, le=cfg.max_top_k)], BeforeValidator(whole_number)],
            Field(1, description="Labels per input, best first (capped at the label count)."),
        ),
        model=(str | None, model_field()),
    )
    embeddings = create_model(
        "EmbeddingsRequest",
        __config__=forbid,
        input=(inputs_type(cfg), Field(description="One text or a list of texts (OpenAI's 'input').")),
        model=(str | None, model_field()),
        normalize=(Annotated[bool, Field(strict=True)], Field(True, description="Scale each vector to length 1.")),
        encoding_format=(
            Annotated[str, Field(strict=True, pattern="^float$")],
            Field("float", description="Only 'float' (a JSON list of numbers)."),
        ),
    )
    return {"/v1/classify": classify, "/v1/embeddings": embeddings}


ERRORS = {
    400: "The body is not JSON, or the model id is malformed or points outside the artifact root.",
    401: "A bearer token is required (the server was started with one) and none or a wrong one was sent.",
    404: "No model with that id.",
    413: "The body, a text or the number of inputs is over the server's limit.",
    422: "The body does not match the request schema, or the model cannot serve this route.",
}
AUTH_ONLY = {401: ERRORS[401]}


def error_responses(statuses: dict[int, str]) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    return {str(s): {"description": d, "content": {"application/json": {"schema": ref}}} for s, d in statuses.items()}


def openapi(app: Any, cfg: ServeConfig, root_path: str, hidden: set[str]) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes, with ``cfg``'s request models; ``hidden`` paths left out."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, servers=None
    )
    if root_path:
        doc["servers"] = [{"url": root_path}]
    doc["paths"] = {p: ops for p, ops in doc["paths"].items() if p not in hidden}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update({"ErrorResponse": ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")})
    schemas.update(ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
    schemas["ErrorResponse"].pop("$defs", None)
    for path, model in request_models(cfg).items():
        post = doc["paths"].get(path, {}).get("post")
        if post is not None:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            post["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            statuses = ERRORS if "requestBody" in op else AUTH_ONLY
            if path == "/healthz":
                continue
            op.setdefault("responses", {}).update(error_responses(statuses))
    return doc
