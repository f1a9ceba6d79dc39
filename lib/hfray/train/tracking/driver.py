"""Tracking around a run on the driver: the Train callbacks to pass, then the learning curve and MLflow's artifacts.

The callbacks are handed over as plain data (:class:`Tracking`) and made Ray Train callbacks where the run's trainer
is built (:func:`realized`): on the driver for a Train run, in the run's task for a task run, whose driver then
imports no Ray Train (:mod:`hfray.train.in_task`). Sweeps use Ray Tune's own ``MLflowLoggerCallback`` (one MLflow
run per trial) and Tune's TensorBoard files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hfray.config import JobConfig
from hfray.storage import fs, layout
from hfray.train.tracking import curves
from hfray.train.tracking.mlflow import (
    MlflowPlan,
    client,
    ensure_mlflow_run,
    experiment_id,
    finish_mlflow_run,
    mlflow_plan,
    mlflow_uri,
)


@dataclass(frozen=True)
class Tracking:
    """A run's TensorBoard and MLflow tracking as plain data; :meth:`callback` is its Ray Train callback
    (:class:`hfray.train.controller.TrackingCallback`, which imports Ray Train)."""

    run_dir: str
    tensorboard: bool
    plan: MlflowPlan | None
    retry_s: float

    def callback(self) -> Any:
        from hfray.train.controller import TrackingCallback

        return TrackingCallback(self.run_dir, self.tensorboard, self.plan, self.retry_s)


def realized(callbacks: list[Any] | None) -> list[Any]:
    """``callbacks`` with each :class:`Tracking` made its Ray Train callback (the others as given)."""
    return [c.callback() if isinstance(c, Tracking) else c for c in callbacks or []]


@contextlib.contextmanager
def tracked_run(job: JobConfig, run_name: str, cancelled: Any = None) -> Iterator[list[Any]]:
    """Around a run's ``fit``: yields the Train callbacks (as :class:`Tracking`, see :func:`realized`); afterwards
    the learning curve and MLflow artifacts.

    ``cancelled()`` true at the end: the run never started (its checks failed, :mod:`hfray.cluster.start_gate`), so
    nothing is tracked.
    """
    cfg = job.tracking
    run_dir = layout.run_dir(job.storage.path, run_name)
    plan = mlflow_plan(job, run_name) if cfg.mlflow else None
    callbacks: list[Any] = []
    if cfg.tensorboard or plan is not None:
        callbacks.append(Tracking(run_dir, cfg.tensorboard, plan, job.storage.retry_s))
    try:
        yield callbacks
    except BaseException:
        if cancelled is not None and cancelled():
            raise
        if plan is not None:  # found (or made, if no report came) so that a resubmission continues it
            client(plan.tracking_uri).set_terminated(ensure_mlflow_run(plan).run_id, status="KILLED")
        raise
    if cancelled is not None and cancelled():
        return
    diagnosis = None
    if cfg.learning_curve:
        diagnosis = curves.write_learning_curve(run_dir, job.evaluation.best_metric_key, f"{job.name}: {run_name}")
    if plan is not None:
        mlflow_run = ensure_mlflow_run(plan)  # the controller's run; made here when no evaluation reported
        finish_mlflow_run(mlflow_run, run_dir, diagnosis)
        print(
            f"[hfray] MLflow: run {mlflow_run.run_id} in experiment {mlflow_run.experiment!r} "
            f"at {mlflow_run.tracking_uri}"
        )


def tune_callbacks(job: JobConfig, sweep_name: str) -> list[Any]:
    """Ray Tune's MLflow logger: one MLflow run per trial (params = the trial's values, every report)."""
    if not job.tracking.mlflow:
        return []
    from ray.tune.logger.mlflow import MLflowLoggerCallback

    uri = mlflow_uri(job)
    store = client(uri)
    experiment = job.tracking.mlflow_experiment or job.name
    experiment_id(store, experiment, uri)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags={"hfray.sweep": sweep_name})]


def sweep_curves(job: JobConfig, trials_storage: str, runs: list[str]) -> None:
    """A learning curve (and diagnosis) in each trial's Train run folder."""
    if job.tracking.learning_curve:
        for run in runs:
            curves.write_learning_curve(fs.join(trials_storage, run), job.evaluation.best_metric_key, run)
