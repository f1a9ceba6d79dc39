"""A fine-tuning task on the driver: data (columns, every row's shape, labels), tokenizer and model config."""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.data.splits import PreparedData
from hfray.model import peft
from hfray.train.arguments import check_training_arguments
from hfray.train.driver import resolve_sources
from hfray.train.recipes.tasks.data import prepare_task_data
from hfray.train.recipes.tasks.registry import get_task


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, PreparedData]:
    """Everything that can be checked without Ray, before any worker starts."""
    check_training_arguments(job)
    job = resolve_sources(job)
    spec = get_task(job.task)
    prepared = prepare_data(job)
    tokenizer = spec.load_processor(job)  # images: the image processor
    facts = spec.check_model(job, tokenizer, prepared.labels)
    peft.check_peft(job, facts["model_type"])
    return job, prepared


def prepare_data(job: JobConfig) -> PreparedData:
    """The data alone, checked row by row (a sweep trial whose values change the data section)."""
    return prepare_task_data(job, get_task(job.task))


def describe(job: JobConfig, prepared: PreparedData) -> str:
    return f"{job.task}, data {prepared.sizes} rows, labels {prepared.labels}"


def loop_config(job: JobConfig, prepared: PreparedData) -> dict[str, Any]:
    return {"labels": prepared.labels, "data_fingerprint": prepared.fingerprint}
