"""Training a job of any task, on the driver: the job's recipe from the task -> recipe table, run by the lifecycle.

``hfray train`` and ``hfray validate`` come here; so do Python users (``run_training(load_job("job.yaml"))``).
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.train import driver
from hfray.train.driver import RunSummary
from hfray.train.recipes import recipe_for


def run_training(job: JobConfig, fresh: bool = False, watch: driver.Watch | None = None) -> RunSummary:
    """Train a job end to end; re-running a finished job returns its results without training (``fresh``: anew).

    ``watch``: given the run's metrics log, a context manager around training (the CLI's progress display).
    """
    return driver.run(job, recipe_for(job.task), fresh, watch)


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, Any]:
    """The job's recipe's checks, before Ray starts: the job with its sources resolved, and what was found.

    ``full=False`` (``hfray validate``) does nothing with side effects, such as training a tokenizer.
    """
    return recipe_for(job.task).preflight(job, full)


def describe(job: JobConfig, info: Any) -> str:
    """One line on what the checks found (data, labels, model), as the recipe says it."""
    return recipe_for(job.task).describe(job, info)
