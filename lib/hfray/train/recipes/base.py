"""What a task's recipe hands the shared run lifecycle (:mod:`hfray.train.driver`).

A recipe is the task-specific part of a run, as in torchtune: on the driver it checks the job before Ray starts
(``preflight``), says in one line what it will train (``describe``) and what the workers need (``loop_config``,
optionally Ray Datasets); on every Ray Train worker its ``train_loop_per_worker`` sets up the data, model and
Trainer, trains, evaluates and exports. Everything else (storage, reuse of a finished run, the cluster, tracking,
failure restarts, the summary) is the lifecycle's and the same for every task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hfray.config import JobConfig


class WorkerFunction:
    """``module.name``, a one-argument function of a recipe's worker module, imported at its first call.

    Why: a recipe's worker module imports the worker lifecycle (Ray Train, Ray Data, pandas: 0.4 s on 2 CPUs), and
    the driver imports the recipe before it connects to Ray, to check the job. Through this the driver imports the
    worker module only where it calls one of its functions (a sweep's export); Ray pickles it by module and name,
    and the worker that runs it imports the module there (issue 19)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self.__name__ = name  # how Ray Train names a train function

    def __call__(self, arg: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(arg)

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class RayDatasets:
    """Ray Datasets a recipe streams to the workers: ``DataParallelTrainer(datasets=..., dataset_config=...)``,
    plus what the workers get in their loop config (e.g. held-out blocks packed on the driver)."""

    datasets: dict[str, Any]
    dataset_config: Any = None
    loop_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A task's recipe. ``info`` is whatever ``preflight`` found (data, labels, model facts) for the other steps.

    - ``preflight(job, full)``: every check that needs no Ray, on the driver; returns the job with its sources
      resolved, and ``info``. ``full=False`` (``hfray validate``) does nothing with side effects (no tokenizer
      training).
    - ``describe(job, info)``: one line for the run's log and ``hfray validate``.
    - ``loop_config(job, info)``: the checked values every worker gets (JSON-able; the lifecycle adds the run's
      paths and the job).
    - ``train_loop_per_worker(loop_config)``: runs on each Ray Train worker.
    - ``artifact_fields(job)``: how the artifact loads: its manifest's ``task`` (the ``transformers.pipeline``
      name), ``pipeline_kwargs`` and ``generation`` (:mod:`hfray.artifacts.manifest`); also used for the artifact
      a sweep exports from a checkpoint.
    - ``ray_datasets(job, info)``: Ray Datasets to stream (none by default).
    - ``connected_checks(job)``: checks once connected to Ray (resources beyond the workers').
    - ``overlaps_checks``: on a running cluster the workers may start while the driver checks (``start_gate``).
    - ``sweepable``: ``hfray sweep`` accepts the task; ``trial_data(job)`` then gives a trial whose values change
      the ``data`` section its own ``info``, data only (the trial process stays free of transformers and torch).
    """

    tasks: tuple[str, ...]
    preflight: Callable[[JobConfig, bool], tuple[JobConfig, Any]]
    describe: Callable[[JobConfig, Any], str]
    loop_config: Callable[[JobConfig, Any], dict[str, Any]]
    train_loop_per_worker: Callable[[dict[str, Any]], None]
    artifact_fields: Callable[[JobConfig], dict[str, Any]]
    ray_datasets: Callable[[JobConfig, Any], RayDatasets] | None = None
    connected_checks: Callable[[JobConfig], None] | None = None
    overlaps_checks: bool = False
    sweepable: bool = False
    trial_data: Callable[[JobConfig], Any] | None = None
