"""What the driver hands Ray Train for a run: the workers' loop config, scaling, run config, and the trainer.

Shared by ``hfray train`` (:mod:`hfray.train.driver`), a task-launched run (:mod:`hfray.train.in_task`, in its
task) and every sweep trial (:mod:`hfray.tune.trial`), for every recipe. The trainer is Ray Train V2's
``DataParallelTrainer`` with hfray's torch backend (:mod:`hfray.train.torch_backend`: no torch import in the driver
or the Train controller).

Ray Train is imported where a trainer is built, not with this module: ``ray.train`` brings Ray Data and pandas
(0.4 s on 2 CPUs), and a driver that launches its run as one task (``resources.launch: task``) never needs it; its
path to ``ray.init`` and to the task's submission is shorter without it (issue 19).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, Any

from hfray import timeline
from hfray.cluster import prewarm
from hfray.config import JobConfig
from hfray.storage import layout
from hfray.train.recipes.base import Recipe

if TYPE_CHECKING:
    import ray.train

# What a Train worker imports while Ray boots it (hfray.cluster.prewarm): the stack every recipe's train function
# imports first (torch, the Trainer, the collators, datasets), in dependency order.
PREWARM_MODULES = ("torch", "datasets", "transformers", "transformers.trainer", "transformers.data.data_collator")


def local_root(storage: str, run_name: str) -> str:
    """A node-local folder for a run's worker files (HF's output_dir, checkpoint stages), the same on every node."""
    key = hashlib.sha256(f"{storage}/{run_name}".encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), "hfray", f"{run_name}-{key}")


def scaling_config(job: JobConfig, in_process: bool = False) -> ray.train.ScalingConfig:
    """The job's workers; ``in_process``: none (Ray's local mode, :mod:`hfray.train.local`)."""
    import ray.train

    res = job.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=0 if in_process else res.num_workers,
        use_gpu=res.gpus_per_worker > 0,
        resources_per_worker=per_worker,
        placement_strategy=res.placement_strategy,
        accelerator_type=res.accelerator_type,
    )


def run_config(
    job: JobConfig, run_name: str, callbacks: list[Any] | None = None, prewarm_workers: bool = True
) -> ray.train.RunConfig:
    """Storage, retention by the best metric, failure restarts and the metrics log: shared by every task.

    ``prewarm_workers``: the workers import :data:`PREWARM_MODULES` while Ray boots them (:mod:`hfray.cluster.prewarm`).
    """
    import ray.train

    from hfray.train.controller import MetricsLogCallback

    storage = job.storage.path
    return ray.train.RunConfig(
        name=run_name,
        storage_path=storage,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=job.storage.num_to_keep,
            checkpoint_score_attribute=job.evaluation.best_metric_key,
            checkpoint_score_order=job.evaluation.best_mode,
        ),
        failure_config=ray.train.FailureConfig(max_failures=job.storage.max_failures),
        worker_runtime_env=prewarm.worker_env(PREWARM_MODULES) if prewarm_workers else {},
        callbacks=[
            MetricsLogCallback(layout.metrics_log_uri(layout.run_dir(storage, run_name)), job.storage.retry_s),
            *(callbacks or []),
        ],
    )


def checked_values(job: JobConfig, recipe: Recipe, info: Any) -> dict[str, Any]:
    """What the driver's checks hand the workers: the checked job and the recipe's values (labels, fingerprints).

    Through the loop config, or through the start gate (:mod:`hfray.cluster.start_gate`) when they overlap.
    """
    return {"job": job.to_dict(), **recipe.loop_config(job, info)}


def loop_values(job: JobConfig, recipe: Recipe, info: Any, gate: str | None) -> dict[str, Any]:
    """The checked values, or (``gate``, a start gate's key) where the workers get them: plain data."""
    return {"start_gate": gate} if gate is not None else checked_values(job, recipe, info)


def build_trainer(
    job: JobConfig,
    recipe: Recipe,
    info: Any,
    run_name: str,
    callbacks: list[Any] | None = None,
    init_checkpoint: ray.train.Checkpoint | None = None,
    gate: str | None = None,
    in_process: bool = False,
    values: dict[str, Any] | None = None,
    marks: list[dict[str, Any]] | None = None,
) -> Any:
    """The Ray Train trainer of a run; ``init_checkpoint``: start from another run's checkpoint (PBT).

    ``in_process``: a one-worker run in the process that calls ``fit()`` (:mod:`hfray.train.local`), no Ray Data.
    ``callbacks``: Ray Train callbacks, or a run's tracking as plain data (:class:`~.tracking.driver.Tracking`).

    ``gate`` (a start gate's key) instead of ``info``: the workers get :func:`checked_values` from the gate;
    ``values``: what :func:`loop_values` gave on the driver, for a run built in its task (:func:`trainer_in_task`),
    with ``marks``, the driver's timeline.

    ``resources.launch: task`` (not in process): a :class:`hfray.train.in_task.TaskTrainer`, which sends the run to
    one Ray task as plain data; the task builds it there. Nothing of Ray Train is imported for it here.
    """
    values = values if values is not None else loop_values(job, recipe, info, gate)
    if not in_process and job.resources.launch == "task":
        from hfray.train.in_task import TaskTrainer

        return TaskTrainer(job, recipe, run_name, values, callbacks, init_checkpoint, build=trainer_in_task)
    from hfray.train.torch_backend import torch_trainer
    from hfray.train.tracking.driver import realized

    storage = job.storage.path
    loop_config: dict[str, Any] = {
        "job": job.to_dict(),
        "run_name": run_name,
        "run_dir": layout.run_dir(storage, run_name),
        "local_root": local_root(storage, run_name),
        "artifact_uri": layout.artifact_uri(storage, run_name),
        "init_checkpoint": init_checkpoint,
        # the driver's marks; a trial's in-process run: the worker's own
        "timeline": marks if marks is not None else [] if in_process else timeline.run_marks(),
        "in_process": in_process,
    }
    loop_config.update(values)
    extra: dict[str, Any] = {}
    if recipe.ray_datasets is not None:
        streamed = recipe.ray_datasets(job, info)
        loop_config.update(streamed.loop_config)
        extra = {"datasets": streamed.datasets, "dataset_config": streamed.dataset_config}
    if in_process:
        from hfray.train.local import InProcessTrainer

        assert not extra, "in-process runs take no Ray Data datasets"
    trainer = torch_trainer(
        recipe.train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(job, in_process),
        trainer_cls=InProcessTrainer if in_process else None,
        # A streaming recipe starts its Ray Data stream before its imports, so the stream's tasks boot meanwhile;
        # the prewarm would hold that start back (MLM on 2 CPUs: first step 1.1 s later, startup_cpu.md).
        run_config=run_config(job, run_name, realized(callbacks), prewarm_workers=not extra.get("datasets")),
        **extra,
    )
    if in_process:
        trainer.retry_s = job.storage.retry_s  # its uploads retry as a worker's (storage.retry_s)
    return trainer


def trainer_in_task(spec: dict[str, Any]) -> Any:
    """In a task-launched run's task (:mod:`hfray.train.in_task`): its in-process trainer from what the driver's
    ``TaskTrainer`` sent (the job re-validated)."""
    job = JobConfig.from_dict(spec["job"])
    return build_trainer(
        job,
        spec["recipe"],
        None,
        spec["run_name"],
        spec["callbacks"],
        spec["init_checkpoint"],
        in_process=True,
        values=spec["values"],
        marks=spec["marks"],
    )
