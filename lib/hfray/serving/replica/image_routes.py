"""``POST /v1/classify-image``: image-classification artifacts over HTTP, in the ingress replicas.

Two ways to send images (one or several per request)::

    multipart/form-data: one or more files in the field "image"; optional fields "top_k", "model"
        curl -F image=@digit.png -F top_k=3 http://127.0.0.1:8000/v1/classify-image
    application/json: {"image": base64 | [base64, ...], "top_k": 1, "model": optional id}
        (a "data:image/png;base64," prefix is accepted)
    -> {"model": id, "results": [[{"label", "score"}, ... top_k], ... one per image]}

Every client mistake is a 4xx whose JSON ``detail`` names the ``field`` (``image``, ``image[1]``, ``top_k``,
``model``, ``body``), found before any model runs: each image is decoded here first. The model runs as
``transformers.pipeline("image-classification")``, as ``hfray predict`` does, in a thread of the ingress replica
(up to ``max_models_per_replica`` pipelines, least recently used evicted); requests are not batched together.
"""

# No "from __future__ import annotations": FastAPI reads the request model's annotations at run time.

import asyncio
import base64
import binascii
from collections import OrderedDict
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.predict import plain_json
from hfray.data.images import open_image
from hfray.serving.catalog import ArtifactCatalog, ModelEntry
from hfray.serving.config import ServeConfig
from hfray.serving.replica.models import torch_placement
from hfray.serving.replica.requests import bad_request, parse_body, read_body, task_entry

TASK = "image-classification"
MAX_BODY_BYTES = 16 * 2**20  # all images of one request together, encoded


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: StrictStr | list[StrictStr] = Field(description="One base64-encoded image file (PNG, JPEG ...) or a list.")
    top_k: StrictInt = Field(1, ge=1, description="Labels per image, best first (capped at the label count).")
    model: StrictStr | None = Field(None, description="Model id from GET /v1/models; default: the server's.")


BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ImageRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer"},
                        "model": {"type": "string"},
                    },
                    "required": ["image"],
                }
            },
        },
    }
}


def _decode(raw: bytes, field: str) -> Any:
    try:
        return open_image(raw).convert("RGB")
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError ...
        raise bad_request(422, field, f"{field}: not a readable image file ({type(exc).__name__})") from None


def _from_base64(text: str, field: str) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(422, field, f"{field}: not valid base64") from None


def parse_json(raw: bytes) -> tuple[list[tuple[bytes, str]], int, str | None]:
    """(image bytes, field) pairs, top_k and model from a JSON body."""
    req = parse_body(raw, ImageRequest, "image", " (base64), or a multipart upload")
    if isinstance(req.image, str):
        items = [(req.image, "image")]
    else:
        items = [(text, f"image[{i}]") for i, text in enumerate(req.image)]
    return [(_from_base64(text, field), field) for text, field in items], req.top_k, req.model


async def parse_multipart(request: Request, cfg: ServeConfig) -> tuple[list[tuple[bytes, str]], int, str | None]:
    """(image bytes, field) pairs, top_k and model from a multipart form."""
    try:
        form = await request.form(max_files=cfg.max_inputs + 1, max_part_size=MAX_BODY_BYTES)
    except Exception as exc:  # starlette: malformed or oversized multipart bodies
        raise bad_request(400, "body", f"body: not a readable multipart form ({exc})") from None
    unknown = sorted(set(form.keys()) - {"image", "top_k", "model"})
    if unknown:
        raise bad_request(422, unknown[0], f"{unknown[0]}: unknown field; expected image, top_k, model")
    uploads = form.getlist("image")
    images = []
    for i, upload in enumerate(uploads):
        field = "image" if len(uploads) == 1 else f"image[{i}]"
        if isinstance(upload, str):
            raise bad_request(422, field, f"{field}: expected a file upload, got a text field")
        images.append((await upload.read(), field))
    top_k, model = form.get("top_k", "1"), form.get("model")
    if not isinstance(top_k, str) or not top_k.strip().isdigit() or int(top_k) < 1:
        raise bad_request(422, "top_k", "top_k: expected a positive integer")
    if model is not None and not isinstance(model, str):
        raise bad_request(422, "model", "model: expected a model id (text)")
    return images, int(top_k), model


async def parse_image_request(request: Request, cfg: ServeConfig) -> tuple[list[Any], int, str | None]:
    """Decoded RGB images, top_k and model of a request, or a 4xx naming the field."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise bad_request(413, "body", f"body: {declared} bytes is more than the {MAX_BODY_BYTES} allowed")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return checked(*await parse_multipart(request, cfg), cfg)
    return checked(*parse_json(await read_body(request, MAX_BODY_BYTES)), cfg)


def checked(
    images: list[tuple[bytes, str]], top_k: int, model: str | None, cfg: ServeConfig
) -> tuple[list[Any], int, str | None]:
    """The server's limits on a parsed request; the images decoded."""
    if not images:
        raise bad_request(422, "image", "image: give at least one image")
    if len(images) > cfg.max_inputs:
        raise bad_request(413, "image", f"image: {len(images)} images; at most {cfg.max_inputs} per request")
    if top_k > cfg.max_top_k:
        raise bad_request(422, "top_k", f"top_k: at most {cfg.max_top_k}")
    return [_decode(raw, field) for raw, field in images], top_k, model


class ImageRoutes:
    """What the ingress does for ``/v1/classify-image``; the ingress registers the route and checks auth."""

    def __init__(self, cfg: ServeConfig, catalog: ArtifactCatalog, default_model: str) -> None:
        self.cfg, self.catalog, self.default_model = cfg, catalog, default_model
        self.pipelines: OrderedDict[str, tuple[Any, asyncio.Lock]] = OrderedDict()  # model path -> pipeline

    def hidden(self) -> set[str]:
        """The route, for ``/openapi.json`` to leave out while no image-classification artifact is served."""
        serves = any(e.manifest.get("task") == TASK for e in self.catalog.entries())
        return set() if serves else {"/v1/classify-image"}

    def entry(self, model: str | None) -> ModelEntry:
        return task_entry(self.catalog, model or self.default_model, (TASK,), "/v1/classify-image")

    async def pipeline(self, entry: ModelEntry) -> tuple[Any, asyncio.Lock]:
        found = self.pipelines.get(entry.path)
        if found is None:
            device, _ = torch_placement(self.cfg)
            pipe = await asyncio.to_thread(load_artifact_pipeline, entry.path, device)
            found = self.pipelines[entry.path] = (pipe, asyncio.Lock())
            while len(self.pipelines) > self.cfg.max_models_per_replica:
                self.pipelines.popitem(last=False)
        self.pipelines.move_to_end(entry.path)
        return found

    async def classify(self, request: Request) -> dict[str, Any]:
        return await self.run(*await parse_image_request(request, self.cfg))

    async def classify_json(self, raw: bytes) -> dict[str, Any]:
        """A JSON body (base64 images) already read: the demo page's path into the same checks and pipeline."""
        return await self.run(*checked(*parse_json(raw), self.cfg))

    async def run(self, images: list[Any], top_k: int, model: str | None) -> dict[str, Any]:
        entry = self.entry(model)
        pipe, lock = await self.pipeline(entry)
        top_k = min(top_k, len(entry.manifest.get("labels") or []) or top_k)
        async with lock:  # one call at a time per pipeline
            results = await asyncio.to_thread(pipe, images, top_k=top_k)
        return {"model": entry.model_id, "results": plain_json(results)}
