"""Hyperparameter sweeps on Ray Tune, the Ray 2.60 way: a Tune function trainable per trial launches
a ``TorchTrainer`` (Ray Train V2) running the same per-worker function as ``hfray train``.

Why not Ray's ``TuneReportCallback``: it forwards metrics only, so schedulers that move checkpoints
between trials (PBT, PB2) or pause trials (synchronous HyperBand) would have nothing to restore.
``TuneBridgeDriver`` (a Train ``UserCallback`` in the Train controller) hands every report, with its
checkpoint, to the trial function through a Ray queue; the trial function calls ``ray.tune.report``
and attaches the checkpoint when the scheduler needs one. A restored trial (PBT exploit, HyperBand
resume, failure) gets ``ray.tune.get_checkpoint()`` and starts a new Train run from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import ray.tune

from hfray import checkpoints, cluster, sweep_results, sweep_space, tracking
from hfray.config import JobConfig
from hfray.errors import ConfigError, HfrayError, Problem, ResourceError, SweepInterrupted
from hfray.schedulers import build_scheduler, build_search_alg

# ----------------------------------------------------------------------------- Train -> Tune bridge


class TuneBridgeDriver(ray.train.UserCallback):
    """Runs in the Train controller: forwards rank 0's metrics and the checkpoint of every report."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put({"metrics": dict(metrics[0]) if metrics else {}, "checkpoint": checkpoint})


def _fit_in_thread(trainer: Any, outcome: dict[str, Any]) -> None:
    from hfray.train import fit_trainer_driver

    try:
        outcome["result"] = fit_trainer_driver(trainer)
    except Exception as exc:  # re-raised in the trial's own thread
        outcome["error"] = exc


def _forward_reports(queue: Any, fit: threading.Thread, metric: str, attach_checkpoints: bool, run: str) -> None:
    """Relay the bridge's reports to Tune until training ends (``ray.tune.report`` must run here)."""
    from ray.util.queue import Empty

    last: dict[str, Any] = {}
    while fit.is_alive() or not queue.empty():
        try:
            item = queue.get(timeout=0.5)
        except Empty:
            continue
        # A report without the sweep metric (a bare save) carries the latest one: schedulers need it.
        last = {**last, **item["metrics"]} if metric not in item["metrics"] else dict(item["metrics"])
        ckpt = item["checkpoint"]
        metrics = {**last, "hfray_run": run, "checkpoint_path": ckpt.path if ckpt is not None else None}
        ray.tune.report(metrics, checkpoint=ckpt if (attach_checkpoints and ckpt is not None) else None)


def sweep_trial_driver(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: the job with this trial's values, trained by a TorchTrainer, reported to Tune."""
    from ray.util.queue import Queue

    from hfray.train import build_trainer_driver, prepare_job_data

    trial_id = ray.tune.get_context().get_trial_id()
    raw = sweep_space.trial_job_dict(context["job"], config, context["trials_storage"])
    job = JobConfig.from_dict(raw, source=f"job of trial {trial_id}")
    prepared = context["prepared"]
    if raw["data"] != context["job"]["data"]:  # the space touches data keys: this trial's own data
        prepared = prepare_job_data(job)
    restored = ray.tune.get_checkpoint()  # a PBT donor's checkpoint, or this trial's own after a pause
    run = trial_id
    if restored is not None:
        run = f"{trial_id}-from-{hashlib.sha256(restored.path.encode()).hexdigest()[:6]}"
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = build_trainer_driver(
        job,
        prepared,
        run,
        callbacks=[TuneBridgeDriver(queue)],
        init_checkpoint=ray.train.Checkpoint(restored.path, restored.filesystem) if restored else None,
    )
    outcome: dict[str, Any] = {}
    fit = threading.Thread(target=_fit_in_thread, args=(trainer, outcome), daemon=True, name="hfray-fit")
    fit.start()
    _forward_reports(queue, fit, context["metric"], context["attach_checkpoints"], run)
    fit.join()
    if "error" in outcome:
        raise outcome["error"]


# ----------------------------------------------------------------------------- resources


def per_trial_resources(job: JobConfig) -> dict[str, float]:
    need = cluster.required_resources(job.resources)
    need["CPU"] = need.get("CPU", 0.0) + job.sweep.trial_driver_cpus  # type: ignore[union-attr]
    return need


def max_concurrent_trials_driver(job: JobConfig) -> int:
    """How many trials the cluster runs at once (fractional GPUs let several share one GPU)."""
    need = per_trial_resources(job)
    total = ray.cluster_resources()
    fits = min(math.floor(total.get(key, 0.0) / amount + 1e-9) for key, amount in need.items() if amount > 0)
    wanted = job.sweep.max_concurrent_trials  # type: ignore[union-attr]
    if job.cluster.check_resources and fits < 1:
        have = ", ".join(f"{total.get(k, 0):g} {k}" for k in need)
        raise ResourceError(
            f"sweep: one trial needs {', '.join(f'{v:g} {k}' for k, v in need.items())} "
            f"(resources.* plus sweep.trial_driver_cpus), the cluster has {have}"
        )
    if wanted is not None and (wanted <= fits or not job.cluster.check_resources):
        return wanted
    if wanted is not None:
        print(f"[hfray] sweep.max_concurrent_trials {wanted} lowered to {fits}: the cluster fits {fits} at once")
    return max(1, fits)


# ----------------------------------------------------------------------------- the tuner


def build_tuner_driver(job: JobConfig, plan: sweep_space.SweepPlan, resume: bool) -> Any:
    sweep = job.sweep
    assert sweep is not None
    context = {
        "job": plan.base_job,
        "prepared": plan.prepared,
        "trials_storage": plan.trials_storage,
        "metric": plan.metric,
        "attach_checkpoints": plan.needs_tune_checkpoints,
    }
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(sweep_trial_driver, context=context), {"CPU": sweep.trial_driver_cpus}
    )
    if resume:
        return ray.tune.Tuner.restore(plan.sweep_dir, trainable, resume_unfinished=True, resume_errored=True)
    scheduler = build_scheduler(sweep, plan)
    return ray.tune.Tuner(
        trainable,
        param_space=sweep_space.param_space(sweep),
        tune_config=ray.tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            scheduler=scheduler,
            search_alg=build_search_alg(sweep, plan.metric, plan.mode, plan.max_concurrent),
            num_samples=sweep.num_samples,
            max_concurrent_trials=plan.max_concurrent,
            time_budget_s=sweep.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=plan.sweep_name,
            storage_path=job.storage.path,
            failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
            # PBT copies a donor's latest checkpoint while the donor trains on: keep a few so it is still there.
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=4 if plan.needs_tune_checkpoints else None),
            callbacks=tracking.tune_callbacks_driver(job, plan.sweep_name),  # MLflow, one run per trial
            verbose=1,
        ),
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def fit_driver(tuner: Any) -> Any:
    """Run the sweep; a trial's user error (HfrayError) surfaces as itself when every trial failed."""
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):
        cause = errors[0]
        while cause is not None and not isinstance(cause, HfrayError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, HfrayError):
            raise cause
        raise HfrayError(f"sweep: every trial failed; first error: {errors[0]}")
    return grid


# ----------------------------------------------------------------------------- the sweep, end to end


@dataclass
class SweepSummary:
    sweep_name: str
    sweep_dir: str
    artifact: str | None
    best: dict[str, Any] | None
    trials: list[dict[str, Any]]
    wall_seconds: float
    cluster: str
    reused: bool = False
    notes: list[str] = field(default_factory=list)


def prepare_sweep_driver(job: JobConfig, fresh: bool = False) -> tuple[JobConfig, sweep_space.SweepPlan]:
    """Every check that needs no trial: the space, the metric, data, tokenizer and model config."""
    from hfray.train import fresh_run_name, preflight_driver

    if job.sweep is None:
        raise ConfigError([Problem("sweep", "hfray sweep needs a sweep: section (parameters, search, scheduler)")])
    name = sweep_space.sweep_name(job)  # from the job as written, before paths are resolved
    if fresh:
        name = fresh_run_name(name)
    notes = []
    if job.sweep.restores_checkpoints and job.training.checkpoint_every_n_evals != 1:
        raw = job.to_dict()
        raw["training"]["checkpoint_every_n_evals"] = 1
        job = JobConfig.from_dict(raw)
        notes.append(f"{job.sweep.scheduler.type} restores checkpoints: training.checkpoint_every_n_evals set to 1")
    edges = sweep_space.check_space_driver(job)
    job, prepared = preflight_driver(job)
    plan = sweep_space.make_plan(job, prepared, name, edges)
    plan.notes = notes
    return job, plan


def expected_trials(sweep: Any) -> int:
    grid = [len(p.values) for p in sweep.parameters.values() if p.type == "grid" or sweep.search == "grid"]
    return sweep.num_samples * math.prod(grid)


def _interrupted(rows: list[Any], expected: int, budget_hit: bool) -> bool:
    """Tune returns normally after SIGINT and may mark cut-off trials TERMINATED (its ``done`` flag is not
    reliable either): a trial ended only if it completed (exported its artifact), a scheduler stopped it (the
    decision log), or it failed. Anything else, or trials never created, means the sweep was interrupted.
    """
    if budget_hit:
        return False
    return any(r.stop_reason.startswith("not finished") for r in rows) or len(rows) < expected


def _finished_summary(plan: sweep_space.SweepPlan, started: float) -> SweepSummary:
    summary = json.loads(checkpoints.read_text(checkpoints.join(plan.sweep_dir, sweep_results.SUMMARY)))
    best = next((t for t in summary["trials"] if t["trial_id"] == summary["best_trial"]), None)
    return SweepSummary(
        plan.sweep_name,
        plan.sweep_dir,
        summary.get("artifact"),
        best,
        summary["trials"],
        time.time() - started,
        "none (sweep already complete)",
        reused=True,
    )


def _check_restorable(plan: sweep_space.SweepPlan, resume: bool) -> None:
    exists = checkpoints.exists(checkpoints.join(plan.sweep_dir, "tuner.pkl"))
    if exists and not resume:
        raise HfrayError(
            f"sweep {plan.sweep_name} was interrupted before it finished ({plan.sweep_dir}): "
            "pass --resume to continue it (finished trials are kept) or --fresh to start a new sweep"
        )
    if resume and not exists:
        raise HfrayError(f"--resume: no interrupted sweep of this job at {plan.sweep_dir}")


def run_sweep_driver(job: JobConfig, resume: bool = False, fresh: bool = False) -> SweepSummary:
    """Sweep a job end to end: checks, trials on Ray Tune, best checkpoint exported, report written."""
    started = time.time()
    job, plan = prepare_sweep_driver(job, fresh)
    if checkpoints.exists(checkpoints.join(plan.sweep_dir, sweep_results.SUMMARY)):
        return _finished_summary(plan, started)
    _check_restorable(plan, resume)
    where = cluster.connect_driver(job.cluster)
    cluster.check_fits_driver(job.resources, job.cluster)
    plan.max_concurrent = max_concurrent_trials_driver(job)
    sweep = job.sweep
    assert sweep is not None
    print(
        f"[hfray] sweep {plan.sweep_name}: {sweep.search} search, {sweep.scheduler.type} scheduler, "
        f"metric {plan.metric} ({plan.mode}), up to {plan.max_concurrent} trials at once, on {where}"
    )
    for note in plan.notes:
        print(f"[hfray] note: {note}")
    fit_started = time.time()
    grid = fit_driver(build_tuner_driver(job, plan, resume))
    budget_hit = bool(sweep.time_budget_s and time.time() - fit_started >= 0.98 * sweep.time_budget_s)
    rows = sweep_results.trial_rows(grid, plan, budget_hit)
    if _interrupted(rows, expected_trials(sweep), budget_hit):
        raise SweepInterrupted(
            f"sweep {plan.sweep_name} interrupted; finished trials and checkpoints are kept. "
            f"Continue it with: hfray sweep <job> --resume   (state: {plan.sweep_dir})"
        )
    best = sweep_results.best_row(rows, plan.mode)
    artifact = sweep_results.export_best(best, plan, plan.prepared.labels) if best else None
    extra = {
        "artifact": artifact,
        "scheduler": sweep.scheduler.type,
        "search": sweep.search,
        "wall_seconds": round(time.time() - started, 1),
    }
    sweep_results.write_report(rows, plan, best, extra)
    tracking.sweep_curves_driver(job, plan.trials_storage, [run for r in rows for run in r.runs])
    trials = [sweep_results.row_dict(r) for r in rows]
    best_dict = sweep_results.row_dict(best) if best else None
    return SweepSummary(
        plan.sweep_name, plan.sweep_dir, artifact, best_dict, trials, time.time() - started, where, notes=plan.notes
    )
