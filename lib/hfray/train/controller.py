"""Ray Train ``UserCallback`` s: they run in the Train controller, which Ray pins to the driver's node.

Why there: Hugging Face's ``MLflowCallback``/``TensorBoardCallback`` log from rank 0, a worker on any node, so a
local MLflow store or event folder there is lost with the node. The controller sees rank 0's metrics of every
report: a driver-local MLflow store (SQLite, the embedded default) works on any cluster, and TensorBoard files
go to the run folder on the job's storage (uploaded when that is a URI such as ``s3://``).

Kept free of transformers and torch: Ray unpickles these callbacks in the controller's process, which then imports
this module; the Hugging Face Trainer stack would cost it seconds per run.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

import ray.train

from hfray.storage import fs
from hfray.train.tracking.mlflow import MlflowPlan, MlflowRun, client, ensure_mlflow_run

TB_DIR = "tensorboard"
# Report keys that are bookkeeping, not metrics.
_NOT_METRICS = {"step", "max_steps", "has_checkpoint", "hfray_resumed_from_step", "on_gpu", "worker_pid", "time"}


class MetricsLogCallback(ray.train.UserCallback):
    """Appends rank 0's metrics of every report to ``<run>/hfray_metrics.jsonl``.

    Read back with :func:`hfray.artifacts.metrics_log.read_metrics_log`.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lines: list[str] | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self.lines is None:  # a restarted driver continues the same log
            self.lines = fs.read_text(self.uri).splitlines() if fs.exists(self.uri) else []
        record = dict(metrics[0]) if metrics else {}
        # A URI (s3://...), not Ray's scheme-less path, so hfray's helpers can open it again.
        record["checkpoint_path"] = (
            fs.uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None
        )
        self.lines.append(json.dumps(record, sort_keys=True))
        fs.write_text(self.uri, "\n".join(self.lines) + "\n")


class TrackingCallback(ray.train.UserCallback):
    """Every report to TensorBoard (``<run>/tensorboard``) and MLflow (:mod:`hfray.train.tracking.mlflow`)."""

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
            client(self.mlflow_run.tracking_uri).log_batch(self.mlflow_run.run_id, metrics=batch)

    def _log_tensorboard(self, values: dict[str, float], step: int) -> None:
        from tensorboardX import SummaryWriter

        remote = fs.is_uri(self.run_dir)
        if not self._tb_local:
            self._tb_local = tempfile.mkdtemp(prefix="hfray-tb-") if remote else fs.join(self.run_dir, TB_DIR)
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
            fs.upload_dir(self._tb_local, fs.join(self.run_dir, TB_DIR))
