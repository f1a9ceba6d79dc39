"""Pre-training on the driver: data sources, tokenizer (trained first if due) and model config checked before Ray
starts; the Ray Data pipeline described (``lm.pipeline: ray-data``), its held-out blocks packed here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray

from hfray import timeline
from hfray.config import JobConfig
from hfray.data.sources import absolute_source
from hfray.data.stream import driver as stream
from hfray.errors import ModelError, ResourceError
from hfray.model import language_model, loading
from hfray.train.arguments import check_training_arguments
from hfray.train.driver import resolve_sources
from hfray.train.recipes.base import RayDatasets


@dataclass
class LMInfo:
    """What the checks found: facts for the log, and the tokenizer (None while it is not trained yet)."""

    facts: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None


def _tokenizer_missing(job: JobConfig) -> bool:
    return job.tokenizer is not None and not os.path.isdir(job.model.tokenizer_source)


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, LMInfo]:
    """Config, data sources, tokenizer and model config, before Ray starts; trains the tokenizer if due.

    With ``full=False`` (``hfray validate``) a tokenizer not trained yet is reported, not trained.
    """
    check_training_arguments(job)
    job = resolve_sources(job)
    lm = job.lm
    assert lm is not None
    if job.tokenizer is not None and job.tokenizer.source:
        job.tokenizer.source = absolute_source(job.tokenizer.source)
    info = LMInfo()
    sources = {"data.train": job.data.train, "data.validation": job.data.validation}
    if lm.pipeline == "ray-data":
        info.facts["formats"] = {k: stream.check_source(v, job.data, k) for k, v in sources.items() if v}
    if _tokenizer_missing(job):
        if not full:
            info.facts["tokenizer"] = (
                f"not trained yet: 'hfray tokenizer' (or 'hfray train') writes {job.model.tokenizer}"
            )
            return job, info
        from hfray.data.tokenizer_training import train_tokenizer

        summary = train_tokenizer(job)
        print(f"[hfray] tokenizer trained: {summary.vocab_size} tokens from {summary.texts} texts -> {summary.path}")
    timeline.mark("driver_data_checked", "driver")
    tokenizer = loading.load_tokenizer(job.model)
    if job.task == "masked-lm" and tokenizer.mask_token is None:
        raise ModelError(f"model.tokenizer: {job.model.tokenizer_source} has no mask token; masked-lm needs one")
    config = language_model.language_model_config(job.model, job.task, tokenizer, lm.block_size)
    info.facts.update(vocab_size=len(tokenizer), model_type=config.model_type, pipeline=lm.pipeline)
    info.tokenizer = tokenizer
    timeline.mark("driver_tokenizer_model_checked", "driver")
    return job, info


def describe(job: JobConfig, info: LMInfo) -> str:
    return f"{job.task}, " + ", ".join(f"{k} {v}" for k, v in info.facts.items())


def loop_config(job: JobConfig, info: LMInfo) -> dict[str, Any]:
    return {}


def ray_datasets(job: JobConfig, info: LMInfo) -> RayDatasets:
    """``lm.pipeline: ray-data``: the lazy train blocks (split across workers) and the held-out blocks."""
    if job.lm is None or job.lm.pipeline != "ray-data":
        return RayDatasets({})
    datasets, blocks = stream.build_datasets(job, info.tokenizer)
    # Only "train" is split across workers; each worker reads the whole (small) held-out set.
    return RayDatasets(datasets, ray.train.DataConfig(["train"]), {"validation_blocks": blocks})


def check_data_cpus(job: JobConfig) -> None:
    """Ray Data's tasks need CPUs the training workers do not hold, or the stream never starts."""
    lm, res = job.lm, job.resources
    if lm is None or lm.pipeline != "ray-data" or not job.cluster.check_resources:
        return
    free = ray.cluster_resources().get("CPU", 0.0) - res.num_workers * res.cpus_per_worker
    if free < lm.tokenize_num_cpus:
        raise ResourceError(
            f"resources: Ray Data tokenize tasks need lm.tokenize_num_cpus={lm.tokenize_num_cpus:g} CPU beyond the "
            f"{res.num_workers} workers x resources.cpus_per_worker={res.cpus_per_worker:g}, the cluster has "
            f"{free:g} left (lower either, e.g. resources.cpus_per_worker=0.5, or add CPUs)"
        )
