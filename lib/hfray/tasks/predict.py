"""``hfray predict`` for the fine-tuning tasks: texts through the artifact's pipeline, one result per text."""

from __future__ import annotations

from typing import Any

from hfray.errors import HfrayError

# Pipeline names of hfray.tasks artifacts (their manifests' "task").
TASK_PIPELINES = ("token-classification", "hfray-question-answering", "hfray-seq2seq")


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
