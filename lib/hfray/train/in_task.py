"""A one-worker run in ONE Ray task (``resources.launch: task``, ``auto``'s choice for one worker): hfray's
in-process runner, placed on the cluster.

Where it runs: the driver builds the run's in-process trainer (:mod:`hfray.train.local`: Ray Train V2's local mode
plus storage, retention, callbacks, resume and failure retries) and :class:`TaskTrainer` hands it to a Ray task
that holds the worker's resources (CPUs, GPUs, accelerator type); the task calls its ``fit()`` and returns nothing
(the driver reads the run from storage, as after a Train run).

Why: a Ray Train run boots two fresh processes one after the other, the Train controller and then the worker
(with its worker-group and process-group set-up), before the train function starts; neither can take one of
Ray's prestarted workers, because Train gives both a runtime env. One task is one process to boot
(``bench/results/overhead_cpu_dec04_late.md``). What it gives up: Train's worker-group restarts (the task is
retried by Ray instead, ``max_retries`` = ``storage.max_failures``, and resumes from the run's last checkpoint)
and Ray Data streaming (a worker group's shards), which the driver refuses before Ray starts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray

from hfray.config import JobConfig
from hfray.errors import ConfigError, Problem


def check_launch(job: JobConfig, streams_ray_data: bool) -> None:
    """``resources.launch: task`` for a task that streams Ray Data is a config error (raised before Ray starts)."""
    if job.resources.launch == "task" and streams_ray_data:
        message = f"'task' cannot run {job.task}: it streams Ray Data to a Ray Train worker group (use 'train')"
        raise ConfigError([Problem("resources.launch", message)], "job")


def resolve_launch(job: JobConfig, streams_ray_data: bool) -> JobConfig:
    """``job`` with ``resources.launch`` decided: ``auto`` is ``task`` for one worker that streams no Ray Data, else
    ``train``. Sweep trials never see ``auto`` resolved here: they train in their own process or through Train."""
    res = job.resources
    if res.launch != "auto":
        return job
    launch = "task" if res.num_workers == 1 and not streams_ray_data else "train"
    return job.model_copy(update={"resources": res.model_copy(update={"launch": launch})})


def _fit_in_task(trainer: Any) -> None:
    trainer.fit()  # its Result stays here: storage has the run (metrics log, checkpoints, artifact)


class TaskTrainer:
    """``fit()`` runs the in-process ``trainer`` in one Ray task with the job's per-worker resources."""

    def __init__(self, trainer: Any, job: JobConfig, run_name: str) -> None:
        self.trainer = trainer
        res = job.resources
        self.options: dict[str, Any] = {
            "num_cpus": res.cpus_per_worker,
            "num_gpus": res.gpus_per_worker,
            "max_retries": job.storage.max_failures,  # a dead process (OOM kill, lost node): again, from storage
            "retry_exceptions": False,  # the in-process runner retries exceptions itself
            "name": f"hfray-run:{run_name}",
        }
        if res.accelerator_type:
            self.options["accelerator_type"] = res.accelerator_type

    def fit(self) -> None:
        ref = ray.remote(**self.options)(_fit_in_task).remote(self.trainer)
        try:
            ray.get(ref)
        except BaseException:
            with contextlib.suppress(Exception):  # Ctrl-C: no task left training behind the driver
                ray.cancel(ref, force=True)
            raise
