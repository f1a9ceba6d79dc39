"""MLflow for hfray runs: one MLflow run per hfray run, found again by its run name when a job resumes.

Plain data (:class:`MlflowPlan`) says what to find or create, so the Train controller opens the MLflow run at the
first report (:class:`hfray.train.controller.TrackingCallback`) and the driver closes it after the run
(:func:`finish_mlflow_run`). ``mlflow`` is imported only where it is used: the store's first open costs seconds.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from hfray.config import JobConfig
from hfray.config.tracking import default_mlflow_uri
from hfray.errors import Problem
from hfray.storage import fs, layout

RUN_TAG = "hfray.run_name"


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


MLFLOW_PIN = "mlflow-skinny==3.17.2"  # pyproject.toml's pin


def mlflow_problems(job: JobConfig) -> list[Problem]:
    """MLflow on but not installed: found before Ray starts (it was found at the first checkpoint, after training)."""
    if job.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        message = f"MLflow is not installed here (pip install '{MLFLOW_PIN}'); install it or set tracking.mlflow=false"
        return [Problem("tracking.mlflow", message)]
    return []


def mlflow_uri(job: JobConfig) -> str:
    return job.tracking.mlflow_tracking_uri or default_mlflow_uri(job.storage.path)


def client(uri: str) -> Any:
    import mlflow

    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # A local store keeps artifacts beside the database, not in whatever directory the driver runs in.
    location = None
    if uri.startswith("sqlite:///"):
        location = os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "artifacts")
    return mlflow_client.create_experiment(name, artifact_location=location)


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

    store = client(plan.tracking_uri)
    exp_id = experiment_id(store, plan.experiment, plan.tracking_uri)
    found = store.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{plan.run_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            store.update_run(run_id, status="RUNNING")
        return MlflowRun(plan.tracking_uri, plan.experiment, run_id)
    run = store.create_run(exp_id, run_name=plan.run_name, tags={RUN_TAG: plan.run_name, "hfray.task": plan.task})
    params = [Param(k, v) for k, v in plan.params.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        store.log_batch(run.info.run_id, params=params[i : i + 100], tags=[RunTag("hfray.storage", plan.storage)])
    return MlflowRun(plan.tracking_uri, plan.experiment, run.info.run_id)


def finish_mlflow_run(run: MlflowRun, run_dir: str, diagnosis: dict[str, Any] | None) -> None:
    store = client(run.tracking_uri)
    names = [layout.METRICS_LOG, layout.CURVE_PNG, layout.CURVE_JSON]
    with tempfile.TemporaryDirectory(prefix="hfray-mlflow-") as stage:
        for name in names:
            uri = fs.join(run_dir, name)
            if fs.exists(uri):
                with open(os.path.join(stage, name), "wb") as f:
                    f.write(fs.read_bytes(uri))
        manifest = fs.join(run_dir, layout.ARTIFACT_DIR, layout.MANIFEST)
        if fs.exists(manifest):
            with open(os.path.join(stage, layout.MANIFEST), "w") as f:
                f.write(fs.read_text(manifest))
        store.log_artifacts(run.run_id, stage)
    if diagnosis:
        store.set_tag(run.run_id, "hfray.diagnosis", diagnosis["verdict"])
    store.set_tag(run.run_id, "hfray.run_dir", run_dir)
    store.set_terminated(run.run_id, status="FINISHED")
