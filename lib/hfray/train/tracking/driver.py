"""Tracking around a run on the driver: the Train callbacks to pass, then the learning curve and MLflow's artifacts.

Sweeps use Ray Tune's own ``MLflowLoggerCallback`` (one MLflow run per trial) and Tune's TensorBoard files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hfray.config import JobConfig
from hfray.storage import fs, layout
from hfray.train.controller import TrackingCallback
from hfray.train.tracking import curves
from hfray.train.tracking.mlflow import (
    client,
    ensure_mlflow_run,
    experiment_id,
    finish_mlflow_run,
    mlflow_plan,
    mlflow_uri,
)


@contextlib.contextmanager
def tracked_run(job: JobConfig, run_name: str, cancelled: Any = None) -> Iterator[list[Any]]:
    """Around a run's ``fit``: yields the Train callbacks; afterwards the learning curve and MLflow artifacts.

    ``cancelled()`` true at the end: the run never started (its checks failed, :mod:`hfray.cluster.start_gate`), so
    nothing is tracked.
    """
    cfg = job.tracking
    run_dir = layout.run_dir(job.storage.path, run_name)
    plan = mlflow_plan(job, run_name) if cfg.mlflow else None
    callbacks: list[Any] = []
    if cfg.tensorboard or plan is not None:
        callbacks.append(TrackingCallback(run_dir, cfg.tensorboard, plan, job.storage.retry_s))
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
