"""Serving token-classification, question-answering and seq2seq artifacts: ``POST /v1/predict``.

The ingress (:mod:`hfray.serving.replica.ingress`) resolves the model id, then :func:`parse_predict` checks the body
against that model's task before anything reaches a replica::

    POST /v1/predict  {"inputs": ..., "model": optional id}
      token-classification: inputs str | [str]  -> results [[{entity_group, word, score, start, end}], ...]
      hfray-question-answering: inputs {question, context} | [...]  -> results [{answer, score, start, end}, ...]
      hfray-seq2seq: inputs str | [str]  -> results [{generated_text}, ...]

:class:`HfrayTaskModels` replicas hold up to ``max_models_per_replica`` artifact pipelines (Serve model
multiplexing, LRU) and run ``transformers.pipeline`` exactly as ``hfray predict`` does, one request at a
time in a thread (no cross-request batching: generation and QA windows make batches uneven).
"""

# No "from __future__ import annotations": Serve inspects deployment signatures (see hfray.serving.replica.ingress).

import asyncio
import json
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from ray import serve

from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.predict import plain_json
from hfray.serving.catalog import ArtifactCatalog
from hfray.serving.config import ServeConfig
from hfray.serving.replica.models import torch_placement

QA_PIPELINE = "hfray-question-answering"


class QuestionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: StrictStr
    context: StrictStr


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Any
    model: StrictStr | None = None


def _problem(status: int, field: str, error: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field, "error": error})


def parse_predict_body(raw: bytes) -> PredictRequest:
    """The body's shape (JSON object, known keys); the inputs are checked once the model's task is known."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _problem(400, "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise _problem(422, "body", "body: expected a JSON object with 'inputs'")
    try:
        return PredictRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise _problem(422, field, f"{field}: {message}") from None


def _check_text(text: Any, field: str, cfg: ServeConfig) -> str:
    if not isinstance(text, str) or not text.strip():
        raise _problem(422, field, f"{field}: expected a non-empty text")
    if not text.isprintable() and _unencodable(text):
        raise _problem(422, field, f"{field}: not valid Unicode text (a lone surrogate cannot be encoded)")
    if len(text) > cfg.max_text_chars:
        raise _problem(413, field, f"{field}: {len(text)} characters; at most {cfg.max_text_chars}")
    return text


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_inputs(inputs: Any, task: str, cfg: ServeConfig) -> list[Any]:
    """The request's inputs as a list, each checked for ``task`` (QA: {question, context} objects)."""
    items = inputs if isinstance(inputs, list) else [inputs]
    if not items:
        raise _problem(422, "inputs", "inputs: give at least one input")
    if len(items) > cfg.max_inputs:
        raise _problem(413, "inputs", f"inputs: {len(items)} inputs; at most {cfg.max_inputs} per request")
    checked: list[Any] = []
    for i, item in enumerate(items):
        where = f"inputs[{i}]" if isinstance(inputs, list) else "inputs"
        if task != QA_PIPELINE:
            checked.append(_check_text(item, where, cfg))
            continue
        try:
            qa = QuestionInput.model_validate(item)
        except ValidationError:
            raise _problem(422, where, f"{where}: expected {{'question': text, 'context': text}}") from None
        _check_text(qa.question, f"{where}.question", cfg)
        _check_text(qa.context, f"{where}.context", cfg)
        checked.append(qa.model_dump())
    return checked


def _run_pipeline(pipe: Any, inputs: list[Any]) -> list[Any]:
    outputs = [pipe(x) for x in inputs] if pipe.task == QA_PIPELINE else pipe(inputs)
    return [plain_json(out) for out in outputs]


@serve.deployment(name="HfrayTaskModels")
class HfrayTaskModels:
    """Pipelines of token-classification, QA and seq2seq artifacts, multiplexed by model id."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.from_dict(config)
        self.catalog = ArtifactCatalog(self.cfg.artifact_root, self.cfg.models)
        self.device, _ = torch_placement(self.cfg)

        async def load(model_id: str) -> Any:
            entry = self.catalog.resolve(model_id)
            return await asyncio.to_thread(load_artifact_pipeline, entry.path, self.device)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.cfg.max_models_per_replica)(load)

    async def predict(self, inputs: list[Any]) -> list[Any]:
        pipe = await self.get_model(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(_run_pipeline, pipe, inputs)
