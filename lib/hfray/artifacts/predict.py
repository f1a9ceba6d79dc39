"""Predictions of an artifact's pipeline for a list of texts, one JSON-able result per text (``hfray predict``)."""

from __future__ import annotations

from typing import Any

from hfray.data.images import open_image
from hfray.errors import HfrayError

# Pipeline names (their manifests' "task") of the fine-tuning tasks beyond classification: one call per batch of
# texts gives one result per text; QA answers each text (a question) from a context.
TASK_PIPELINES = ("token-classification", "hfray-question-answering", "hfray-seq2seq")
DEFAULT_MAX_NEW_TOKENS = 32


def plain_json(value: Any) -> Any:
    """numpy scalars (token-classification scores) -> Python numbers, so results print as JSON."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def predict_per_text(pipe: Any, texts: list[str], context: str | None) -> list[Any]:
    """Entities per text (token-classification), the answer to each question (QA), or the generated text."""
    if pipe.task == "hfray-question-answering":
        if not context:
            raise HfrayError("--context: a question-answering artifact answers the texts (questions) from a context")
        outputs = [pipe({"question": text, "context": context}) for text in texts]
    else:
        outputs = pipe(texts)
    return [plain_json(out) for out in outputs]


def predict_images(pipe: Any, paths: list[str], top_k: int) -> list[Any]:
    """The top labels of each image file (an image-classification artifact); an unreadable file names itself."""
    images = []
    for path in paths:
        try:
            images.append(open_image(path).convert("RGB"))
        except Exception as exc:  # FileNotFoundError, PIL's UnidentifiedImageError ...
            raise HfrayError(f"{path}: cannot read it as an image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return plain_json(pipe(images, top_k=top_k))


def predict(pipe: Any, texts: list[str], top_k: int = 1, context: str | None = None) -> list[Any]:
    """One result per text, whatever the artifact's task: labels, entities, answers, masks filled, text generated;
    for an image-classification artifact the texts are image files."""
    if pipe.task == "image-classification":
        return predict_images(pipe, texts, top_k)
    if pipe.task in TASK_PIPELINES:
        return predict_per_text(pipe, texts, context)
    if pipe.task == "fill-mask":
        return [plain_json(pipe(text, top_k=top_k)) for text in texts]
    if pipe.task == "text-generation":
        return [plain_json(pipe(text, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)) for text in texts]
    return plain_json(pipe(texts, top_k=top_k))
