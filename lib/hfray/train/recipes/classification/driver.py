"""Text classification on the driver: data, labels, tokenizer and model config checked before Ray starts."""

from __future__ import annotations

from typing import Any

from hfray import timeline
from hfray.config import JobConfig
from hfray.data import classification as data
from hfray.data.splits import PreparedData
from hfray.errors import HfrayError
from hfray.model import loading, peft
from hfray.train.arguments import check_training_arguments
from hfray.train.driver import resolve_sources


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, PreparedData]:
    """Everything that can be checked without Ray: config, data, tokenizer and model config."""
    check_training_arguments(job)
    job = resolve_sources(job)
    prepared = prepare_data(job)
    timeline.mark("driver_data_checked", "driver")
    tokenizer = loading.load_tokenizer(job.model)
    config = loading.load_config(job.model, **loading.classification_overrides(prepared.labels, tokenizer))
    timeline.mark("driver_tokenizer_model_checked", "driver")
    peft.check_peft(job, config.model_type)
    weights = job.training.class_weights
    if isinstance(weights, list) and len(weights) != len(prepared.labels):
        raise HfrayError(
            f"training.class_weights: {len(weights)} weights for {len(prepared.labels)} labels {prepared.labels}"
        )
    return job, prepared


def prepare_data(job: JobConfig) -> PreparedData:
    """The data alone, checked (a sweep trial whose values change the data section)."""
    return data.prepare(job.data)


def describe(job: JobConfig, prepared: PreparedData) -> str:
    return f"data {prepared.sizes} rows, labels {prepared.labels}"


def class_weights(job: JobConfig, prepared: PreparedData) -> list[float] | None:
    cw = job.training.class_weights
    if cw == "none":
        return None
    if cw == "balanced":
        return data.class_weights(prepared.splits["train"], job.data, prepared.labels)
    return list(cw)


def loop_config(job: JobConfig, prepared: PreparedData) -> dict[str, Any]:
    return {
        "labels": prepared.labels,
        "data_fingerprint": prepared.fingerprint,
        "class_weights": class_weights(job, prepared),
    }
