"""Dashboards and tracking of runs: TensorBoard, MLflow, learning curves, a progress bar.

Where it runs, and why: Hugging Face's ``MLflowCallback``/``TensorBoardCallback`` log from rank 0, a
worker on any node, so a local MLflow store or event folder there is lost with the node. hfray logs
from the Ray Train controller instead (``TrackingDriver``, a Train ``UserCallback``), which Ray pins
to the driver's node and which sees rank 0's metrics at every evaluation: a driver-local MLflow store
(SQLite, the embedded default) works on any cluster, and TensorBoard files go to the run folder on the
job's storage (uploaded when that is a URI such as ``s3://``). One MLflow run per hfray run: a resumed
or resubmitted job continues the MLflow run tagged with its run name. Sweeps use Ray Tune's own
``MLflowLoggerCallback`` (and Tune's TensorBoard files per trial), in the sweep's driver.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray.train

from hfray import checkpoints, curves, storage
from hfray.config import JobConfig
from hfray.tracking_config import default_mlflow_uri

RUN_TAG = "hfray.run_name"
TB_DIR = "tensorboard"
# Report keys that are bookkeeping, not metrics.
_NOT_METRICS = {"step", "has_checkpoint", "hfray_resumed_from_step", "on_gpu", "worker_pid", "time"}


@dataclass(frozen=True)
class MlflowRun:
    tracking_uri: str
    experiment: str
    run_id: str


@dataclass(frozen=True)
class MlflowPlan:
    """What finds or creates a run's MLflow run; plain data, so the Train controller can do it itself."""

    tracking_uri: str
    experiment: str
    run_name: str
    task: str
    storage: str
    params: dict[str, str]


def mlflow_uri(job: JobConfig) -> str:
    return job.tracking.mlflow_tracking_uri or default_mlflow_uri(job.storage.path)


def _client(uri: str) -> Any:
    import mlflow

    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # A local store keeps artifacts beside the database, not in whatever directory the driver runs in.
    location = None
    if uri.startswith("sqlite:///"):
        location = os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "artifacts")
    return client.create_experiment(name, artifact_location=location)


def _flat(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(value)[:500]
    return out


def mlflow_plan(job: JobConfig, run_name: str) -> MlflowPlan:
    # What the run name hashes: storage, cluster and tracking settings may differ between resubmissions.
    relevant = {k: v for k, v in job.to_dict().items() if k not in ("storage", "cluster", "tracking")}
    experiment = job.tracking.mlflow_experiment or job.name
    return MlflowPlan(mlflow_uri(job), experiment, run_name, job.task, job.storage.path, _flat("", relevant, {}))


def ensure_mlflow_run(plan: MlflowPlan) -> MlflowRun:
    """The MLflow run tagged with ``plan.run_name`` (a resumed job continues it), created with the params if new."""
    from mlflow.entities import Param, RunTag

    client = _client(plan.tracking_uri)
    exp_id = _experiment_id(client, plan.experiment, plan.tracking_uri)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{plan.run_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return MlflowRun(plan.tracking_uri, plan.experiment, run_id)
    run = client.create_run(exp_id, run_name=plan.run_name, tags={RUN_TAG: plan.run_name, "hfray.task": plan.task})
    params = [Param(k, v) for k, v in plan.params.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i : i + 100], tags=[RunTag("hfray.storage", plan.storage)])
    return MlflowRun(plan.tracking_uri, plan.experiment, run.info.run_id)


class TrackingDriver(ray.train.UserCallback):
    """In the Train controller (the driver's node): every report to TensorBoard and MLflow."""

    def __init__(self, run_dir: str, tensorboard: bool, mlflow_plan: MlflowPlan | None) -> None:
        self.run_dir = run_dir
        self.tensorboard = tensorboard
        # The controller opens the MLflow run at its first report, not the driver before training: importing
        # mlflow and opening its store took 2.4-2.6 s of the start-up on 2 CPUs (bench/results/overhead_cpu.md),
        # and the controller pays most of that anyway to log the first metrics.
        self.mlflow_plan = mlflow_plan
        self.mlflow_run: MlflowRun | None = None
        self._reports = 0
        self._tb_local = ""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        record = dict(metrics[0]) if metrics else {}
        step = int(record.get("step", 0))
        values = {k: float(v) for k, v in record.items() if k not in _NOT_METRICS and isinstance(v, (int, float))}
        if self.tensorboard:
            self._log_tensorboard(values, step)
        if self.mlflow_plan is not None and values:
            from mlflow.entities import Metric

            if self.mlflow_run is None:
                self.mlflow_run = ensure_mlflow_run(self.mlflow_plan)

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step) for k, v in sorted(values.items())]
            _client(self.mlflow_run.tracking_uri).log_batch(self.mlflow_run.run_id, metrics=batch)

    def _log_tensorboard(self, values: dict[str, float], step: int) -> None:
        from tensorboardX import SummaryWriter

        remote = storage.is_uri(self.run_dir)
        if not self._tb_local:
            self._tb_local = tempfile.mkdtemp(prefix="hfray-tb-") if remote else checkpoints.join(self.run_dir, TB_DIR)
        # One event file per report, closed at once: tensorboardX queues events for a writer thread and its
        # flush() does not drain that queue, so the last report's events were lost when the controller ended.
        writer = SummaryWriter(self._tb_local, filename_suffix=f".step{step:08d}.{self._reports}")
        self._reports += 1
        for key, value in values.items():  # HF's names: train/loss, eval/accuracy, ...
            tag = (
                f"eval/{key.removeprefix('eval_')}"
                if key.startswith("eval_")
                else f"train/{key.removeprefix('train_')}"
            )
            writer.add_scalar(tag, value, step)
        writer.close()
        if remote:
            checkpoints.upload_dir(self._tb_local, checkpoints.join(self.run_dir, TB_DIR))


@contextlib.contextmanager
def tracked_run_driver(job: JobConfig, run_name: str, cancelled: Any = None) -> Iterator[list[Any]]:
    """Around a run's ``fit``: yields the Train callbacks; afterwards the learning curve and MLflow artifacts.

    ``cancelled()`` true at the end: the run never started (its checks failed, ``hfray.start_gate``), so nothing
    is tracked.
    """
    cfg = job.tracking
    run_dir = checkpoints.join(job.storage.path, run_name)
    plan = mlflow_plan(job, run_name) if cfg.mlflow else None
    callbacks: list[Any] = []
    if cfg.tensorboard or plan is not None:
        callbacks.append(TrackingDriver(run_dir, cfg.tensorboard, plan))
    try:
        yield callbacks
    except BaseException:
        if cancelled is not None and cancelled():
            raise
        if plan is not None:  # found (or made, if no report came) so that a resubmission continues it
            _client(plan.tracking_uri).set_terminated(ensure_mlflow_run(plan).run_id, status="KILLED")
        raise
    if cancelled is not None and cancelled():
        return
    diagnosis = None
    if cfg.learning_curve:
        diagnosis = curves.write_learning_curve(run_dir, job.evaluation.best_metric_key, f"{job.name}: {run_name}")
    if plan is not None:
        mlflow_run = ensure_mlflow_run(plan)  # the controller's run; made here when no evaluation reported
        _finish_mlflow_run(mlflow_run, run_dir, diagnosis)
        print(
            f"[hfray] MLflow: run {mlflow_run.run_id} in experiment {mlflow_run.experiment!r} "
            f"at {mlflow_run.tracking_uri}"
        )


def _finish_mlflow_run(run: MlflowRun, run_dir: str, diagnosis: dict[str, Any] | None) -> None:
    client = _client(run.tracking_uri)
    names = [checkpoints.METRICS_LOG, curves.CURVE_PNG, curves.CURVE_JSON]
    with tempfile.TemporaryDirectory(prefix="hfray-mlflow-") as stage:
        for name in names:
            uri = checkpoints.join(run_dir, name)
            if checkpoints.exists(uri):
                with open(os.path.join(stage, name), "wb") as f:
                    f.write(checkpoints.read_bytes(uri))
        manifest = checkpoints.join(run_dir, checkpoints.ARTIFACT_DIR, checkpoints.MANIFEST)
        if checkpoints.exists(manifest):
            with open(os.path.join(stage, checkpoints.MANIFEST), "w") as f:
                f.write(checkpoints.read_text(manifest))
        client.log_artifacts(run.run_id, stage)
    if diagnosis:
        client.set_tag(run.run_id, "hfray.diagnosis", diagnosis["verdict"])
    client.set_tag(run.run_id, "hfray.run_dir", run_dir)
    client.set_terminated(run.run_id, status="FINISHED")


def tune_callbacks_driver(job: JobConfig, sweep_name: str) -> list[Any]:
    """Ray Tune's MLflow logger: one MLflow run per trial (params = the trial's values, every report)."""
    if not job.tracking.mlflow:
        return []
    from ray.tune.logger.mlflow import MLflowLoggerCallback

    uri = mlflow_uri(job)
    client = _client(uri)
    experiment = job.tracking.mlflow_experiment or job.name
    _experiment_id(client, experiment, uri)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags={"hfray.sweep": sweep_name})]


def sweep_curves_driver(job: JobConfig, trials_storage: str, runs: list[str]) -> None:
    """A learning curve (and diagnosis) in each trial's Train run folder."""
    if job.tracking.learning_curve:
        for run in runs:
            curves.write_learning_curve(checkpoints.join(trials_storage, run), job.evaluation.best_metric_key, run)


def callbacks_per_worker(job: JobConfig, run_name: str) -> list[Any]:
    """The HF Trainer callbacks of tracking (every rank adds them; they act on rank 0)."""
    if not job.tracking.progress_bar:
        return []
    from hfray.progress_bar import ProgressBarPerWorker  # transformers' Trainer stack: workers only

    return [ProgressBarPerWorker(run_name)]
