"""A job's optimizer steps, counted as the HF Trainer counts them: one arithmetic for the sweep's plan (grace
periods, warm-up, the refit) and the workers' speed defaults, so both see the steps the Trainer then takes.

Nothing here reads data: callers pass the training rows they counted (the driver's checks, or the worker once its
split is tokenized).
"""

from __future__ import annotations

import math

from hfray.config.job import JobConfig


def steps_per_epoch(job: JobConfig, train_rows: int, world_size: int | None = None) -> int:
    """Optimizer steps in one epoch. ``world_size``: the workers sharing the data (``resources.num_workers`` unless
    given). As transformers 5: a short last accumulation window is a step too, and an epoch has at least one."""
    t = job.training
    workers = world_size or job.resources.num_workers
    batches = math.ceil(train_rows / (t.per_device_train_batch_size * workers))  # each worker's, per epoch
    return max(1, math.ceil(batches / t.gradient_accumulation_steps))


def total_steps(job: JobConfig, train_rows: int, world_size: int | None = None) -> int:
    """The optimizer steps the run plans: ``training.max_steps``, else the epochs' (fractional epochs round up)."""
    t = job.training
    if t.max_steps > 0:
        return t.max_steps
    return math.ceil(t.num_train_epochs * steps_per_epoch(job, train_rows, world_size))
