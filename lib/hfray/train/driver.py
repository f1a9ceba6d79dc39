"""The run lifecycle on the driver, the same for every task; a task's recipe fills in the task-specific steps.

``hfray train`` is :func:`hfray.train.run.run_training`, which looks the job's recipe up and calls :func:`run`:

1. The recipe's checks (:mod:`hfray.train.recipes`): job, data, tokenizer and model config, before Ray starts.
2. A run whose artifact exists is not trained again (its summary is returned); ``--fresh`` starts a new run, which
   becomes the job's latest (:func:`latest_run`): running the job again resumes it.
3. Connect to Ray (or start a local cluster) and check the cluster can fit the workers.
4. Tracking around ``fit`` (TensorBoard, MLflow, learning curve), the Ray Train trainer (:mod:`hfray.train.launch`).
5. A worker's user error (``HfrayError``) is raised as itself, not wrapped by Ray; the summary of the run.

A recipe that allows it overlaps step 1 with the Ray side's start-up (:func:`run_gated`): the local cluster's
boot, and the workers, which wait at a start gate until the checks pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hfray import timeline
from hfray.artifacts.manifest import read_manifest
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.cluster import connect, start_gate
from hfray.config import JobConfig
from hfray.data.sources import absolute_source, check_exists
from hfray.errors import user_error_in
from hfray.model.loading import absolute_model_source
from hfray.storage import endpoint, fs, layout
from hfray.train import in_task, launch
from hfray.train.recipes.base import Recipe
from hfray.train.tracking.driver import tracked_run

# Set by Ray's job manager in the environment of a submitted job's entrypoint (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Given a run's metrics log (URI), a context around ``fit``: how the CLI follows a run's reports.
Watch = Callable[[str], contextlib.AbstractContextManager[None]]


@dataclass
class RunSummary:
    run_name: str
    run_dir: str
    artifact: str
    manifest: dict[str, Any]
    wall_seconds: float
    cluster: str
    reused: bool = False
    checkpoints: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})


# ----------------------------------------------------------------------------- before Ray


def _resolve_storage(raw: dict[str, Any], endpoint_url: str | None) -> None:
    """In place: the storage path as Ray wants it, this process pointed at its endpoint, the path reachable."""
    raw["storage"]["path"] = fs.normalize(raw["storage"]["path"])
    endpoint.activate(raw["storage"]["path"], endpoint_url)
    endpoint.check_reachable(raw["storage"]["path"])


def resolve_storage(job: JobConfig) -> JobConfig:
    """The job with its storage resolved as :func:`resolve_sources` does (cheap: no data, no transformers)."""
    raw = job.to_dict()
    _resolve_storage(raw, job.storage.endpoint_url)
    return JobConfig.from_dict(raw)


def resolve_sources(job: JobConfig) -> JobConfig:
    """Absolute paths for data and models (Ray workers do not share the driver's working dir), storage resolved."""
    raw = job.to_dict()
    for split in ("train", "validation", "test"):
        raw["data"][split] = absolute_source(raw["data"][split])
    raw["model"]["name_or_path"] = absolute_model_source(raw["model"]["name_or_path"])
    raw["model"]["tokenizer"] = absolute_model_source(raw["model"]["tokenizer"])
    _resolve_storage(raw, job.storage.endpoint_url)
    return JobConfig.from_dict(raw)


# ----------------------------------------------------------------------------- runs and their summaries


def fresh_run_name(name: str) -> str:
    """``--fresh``: the stable name plus the start time, so nothing of an earlier run is reused."""
    return f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def latest_run(storage: str, stable: str, fresh: bool, finished: Callable[[str], bool]) -> str:
    """The run (or sweep) a job's command works on, by its stable name: the job's latest run, which ``--fresh`` sets
    aside for a new one, recorded in ``<storage>/<stable>.latest`` so running the job again reaches it.

    Without ``--fresh``: the latest run (resumed, or its results when ``finished``). With ``--fresh``: a new run,
    except when the latest was itself started by ``--fresh`` and is unfinished: the same command, run again after a
    stop (a killed process, a stopped Ray job, a retried submission), resumes it.
    """
    pointer = layout.latest_pointer(storage, stable)
    latest = json.loads(fs.read_text(pointer)) if fs.exists(pointer) else None
    if latest is not None and not fresh:
        return latest["run"]
    if latest is not None and latest.get("fresh") and not finished(latest["run"]):
        print(f"[hfray] --fresh: the latest run {latest['run']} of this job is unfinished: resuming it", flush=True)
        return latest["run"]
    if not fresh:
        return stable
    name = fresh_run_name(stable)
    fs.write_text(pointer, json.dumps({"run": name, "fresh": True, "set_aside": latest["run"] if latest else stable}))
    return name


def run_is_complete(job: JobConfig, run_name: str) -> bool:
    """A run is complete once its artifact's manifest (written last) exists."""
    return fs.exists(fs.join(layout.artifact_uri(job.storage.path, run_name), layout.MANIFEST))


def summary(job: JobConfig, run_name: str, started: float, where: str, reused: bool) -> RunSummary:
    run_dir = layout.run_dir(job.storage.path, run_name)
    artifact = layout.artifact_uri(job.storage.path, run_name)
    records = read_metrics_log(layout.metrics_log_uri(run_dir))
    kept = sorted(
        {r["checkpoint_path"] for r in records if r.get("checkpoint_path") and fs.exists(r["checkpoint_path"])}
    )
    manifest = read_manifest(artifact)
    return RunSummary(run_name, run_dir, artifact, manifest, time.time() - started, where, reused, kept)


def reuse_or_connect(job: JobConfig, run_name: str, started: float) -> tuple[RunSummary | None, str]:
    """(The summary of a run already complete, "") or (None, where the job runs: connected, resources checked)."""
    if run_is_complete(job, run_name):
        return summary(job, run_name, started, "none (run already complete)", reused=True), ""
    where = connect.connect(job.cluster, one_task=job.resources.launch == "task")
    timeline.mark("driver_ray_connected", "driver")
    connect.check_fits(job.resources, job.cluster)
    return None, where


def unwrap_user_error(exc: Exception) -> Exception:
    """Turn Ray's wrapper around a worker's (or the Train controller's) HfrayError back into that error (no traceback
    for users)."""
    return user_error_in(exc) or exc


def fit(trainer: Any, run_dir: str = "", watch: Watch | None = None) -> Any:
    """``trainer.fit()``; a worker's user error (HfrayError) is raised as itself, without Ray's wrapping.

    ``watch``: a context manager factory given the run's metrics log, around ``fit`` (the CLI's progress display).
    """
    watching = watch(layout.metrics_log_uri(run_dir)) if watch is not None else contextlib.nullcontext()
    try:
        with watching:
            return trainer.fit()
    except Exception as exc:
        unwrapped = unwrap_user_error(exc)
        if unwrapped is not exc:
            raise unwrapped from None
        raise


# ----------------------------------------------------------------------------- the run


def run_checked(job: JobConfig, recipe: Recipe, fresh: bool, watch: Watch | None = None) -> RunSummary:
    """Checks first, then Ray: the order for every recipe on a cluster that hfray starts itself."""
    started = time.time()
    timeline.mark("driver_run_start", "driver", at=started)
    run_name = job.run_name  # from the job as written: resolved paths differ between machines
    job, info = recipe.preflight(job, True)
    timeline.mark("driver_preflight", "driver")
    run_name = latest_run(job.storage.path, run_name, fresh, lambda run: run_is_complete(job, run))
    finished, where = reuse_or_connect(job, run_name, started)
    if finished is not None:
        return finished
    if recipe.connected_checks is not None:
        recipe.connected_checks(job)
    print(f"[hfray] run {run_name}: {recipe.describe(job, info)}, on {where}", flush=True)
    with tracked_run(job, run_name) as callbacks:  # TensorBoard, MLflow, learning curve
        timeline.mark("driver_tracking_started", "driver")
        trainer = launch.build_trainer(job, recipe, info, run_name, callbacks)
        timeline.mark("driver_trainer_built", "driver")
        fit(trainer, layout.run_dir(job.storage.path, run_name), watch)
        timeline.mark("driver_fit_returned", "driver")
    return summary(job, run_name, started, where, reused=False)


def _finish_checks(thread: threading.Thread, box: dict[str, Any], run_dir: str, existed: bool) -> None:
    """After ``fit``: a failed check is raised, and the folder Ray made for the run that never trained removed."""
    thread.join()
    if "error" in box:
        if not existed:
            fs.remove_tree(run_dir)
        raise box["error"]


def run_gated(job: JobConfig, recipe: Recipe, fresh: bool, watch: Watch | None = None) -> RunSummary:
    """Ray and the checks at once: storage and the reuse of a finished run come first; then a thread runs the
    recipe's checks while this one connects to Ray (or boots the local cluster) and starts ``fit()``; the checks
    open the start gate with their result. A check that failed while Ray was connecting is raised before ``fit``;
    one that fails later ends the workers untrained. Either way the run's new folder is removed, nothing is
    tracked, and the check's error is raised."""
    started = time.time()
    timeline.mark("driver_run_start", "driver", at=started)
    run_name = job.run_name
    job = resolve_storage(job)
    run_name = latest_run(job.storage.path, run_name, fresh, lambda run: run_is_complete(job, run))
    if run_is_complete(job, run_name):
        return summary(job, run_name, started, "none (run already complete)", reused=True)
    for split in ("train", "validation", "test"):
        check_exists(getattr(job.data, split), f"data.{split}")
    connected, place = threading.Event(), {"where": ""}

    def checks() -> dict[str, Any]:
        checked, info = recipe.preflight(job, True)
        timeline.mark("driver_preflight", "driver")
        connected.wait()
        print(f"[hfray] run {run_name}: {recipe.describe(checked, info)}, on {place['where']}", flush=True)
        return launch.checked_values(checked, recipe, info)

    gate = start_gate.StartGate(run_name)
    thread, box = start_gate.check_in_background(gate, checks, ready=connected)
    place["where"] = connect.connect(job.cluster, one_task=job.resources.launch == "task")
    timeline.mark("driver_ray_connected", "driver")
    connect.check_fits(job.resources, job.cluster)  # raised here, the checks thread waits (a daemon) untouched
    connected.set()
    run_dir = layout.run_dir(job.storage.path, run_name)
    existed = fs.exists(run_dir)
    if "error" in box:  # failed while Ray was starting: no worker needed
        _finish_checks(thread, box, run_dir, existed)
    try:
        with tracked_run(job, run_name, cancelled=lambda: thread.join() or "error" in box) as callbacks:
            trainer = launch.build_trainer(job, recipe, None, run_name, callbacks, gate=gate.key)
            timeline.mark("driver_trainer_built", "driver")
            try:
                fit(trainer, run_dir, watch)
            except BaseException:
                _finish_checks(thread, box, run_dir, existed)  # a failed check is what went wrong, if one failed
                raise
            timeline.mark("driver_fit_returned", "driver")
            _finish_checks(thread, box, run_dir, existed)
    finally:
        gate.close()
    return summary(job, run_name, started, place["where"], reused=False)


def overlaps_checks(job: JobConfig, recipe: Recipe) -> bool:
    """Whether Ray starts while the driver checks: the recipe and the job (``cluster.overlap_checks``) allow it. On
    a running cluster the workers boot meanwhile; a local cluster that hfray starts boots meanwhile too (issue 19).

    Not under ``ray job submit``: there the driver runs in the job's unpacked ``working_dir``, and once the Train
    actors start, the checks' first import of transformers found that directory gone (``FileNotFoundError`` from
    ``os.getcwd``; tests/cluster/test_ops_cluster.py, seen with Ray 2.60). Checks first, as before the gate, pass.
    """
    return recipe.overlaps_checks and job.cluster.overlap_checks and RAY_JOB_ENV not in os.environ


def run(job: JobConfig, recipe: Recipe, fresh: bool = False, watch: Watch | None = None) -> RunSummary:
    """Train a job end to end with its recipe; re-running a finished job returns its results without training."""
    in_task.check_launch(job, recipe.ray_datasets is not None)
    job = in_task.resolve_launch(job, recipe.ray_datasets is not None)
    if overlaps_checks(job, recipe):
        return run_gated(job, recipe, fresh, watch)
    return run_checked(job, recipe, fresh, watch)
