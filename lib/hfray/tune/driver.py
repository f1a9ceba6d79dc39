"""Hyperparameter sweeps on Ray Tune, on the driver: ``hfray sweep`` is :func:`run_sweep`.

Checks first (the space at its edges, the metric, the recipe's data and model checks; while Ray starts, unless
``cluster.overlap_checks`` is off or under ``ray job submit``), then one Tune function
trainable per trial (:mod:`hfray.tune.trial`) that runs the same Ray Train run as ``hfray train``; the schedulers
are Ray's with a decision log (:mod:`hfray.tune.schedulers`). After the sweep, the best checkpoint across all
trials is exported as an artifact and the report written (:mod:`hfray.tune.results`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.tune

from hfray.cluster import connect
from hfray.config import JobConfig
from hfray.data.sources import load_source
from hfray.errors import ConfigError, HfrayError, Problem, SweepInterrupted
from hfray.storage import fs, layout
from hfray.train.driver import RAY_JOB_ENV, latest_run, resolve_storage
from hfray.train.launch import local_root
from hfray.train.recipes import RECIPES, recipe_for
from hfray.train.tracking.driver import sweep_curves, tune_callbacks
from hfray.tune import holdout, results
from hfray.tune.choice import check_choice
from hfray.tune.placement import connect_sweep, expected_trials, per_trial_resources
from hfray.tune.plan import SweepPlan, make_plan, sweep_name
from hfray.tune.refit import refit_validation
from hfray.tune.schedulers import build_scheduler, build_search_alg
from hfray.tune.space import check_space, param_space
from hfray.tune.trial import sweep_trial

# ----------------------------------------------------------------------------- the tuner


def build_tuner(job: JobConfig, plan: SweepPlan, resume: bool) -> Any:
    sweep = job.sweep
    assert sweep is not None
    context = {
        "job": plan.base_job,
        "prepared": plan.prepared,
        "trials_storage": plan.trials_storage,
        "metric": plan.metric,
        "attach_checkpoints": plan.needs_tune_checkpoints,
        "reuse_actors": reuses_actors(sweep),
        "in_process": plan.in_process,
        # The job's variables, which an in-process sweep's job env does not carry (connect.job_runtime_env)
        "env": connect.task_variables(job.cluster) if plan.in_process else {},
    }
    # An in-process trial trains in its trial process, which then holds the worker's resources as well.
    held = per_trial_resources(job) if plan.in_process else {"CPU": sweep.trial_driver_cpus}
    trainable = ray.tune.with_resources(ray.tune.with_parameters(sweep_trial, context=context), held)
    if resume:
        return ray.tune.Tuner.restore(plan.sweep_dir, trainable, resume_unfinished=True, resume_errored=True)
    scheduler = build_scheduler(sweep, plan)
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=ray.tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            scheduler=scheduler,
            search_alg=build_search_alg(sweep, plan.metric, plan.mode, plan.max_concurrent),
            num_samples=sweep.num_samples,
            # Given to the search algorithm (build_search_alg); Tune warns that it ignores this for
            # BasicVariantGenerator, and wraps only a Searcher (optuna) in a ConcurrencyLimiter.
            max_concurrent_trials=plan.max_concurrent if sweep.search == "optuna" else None,
            time_budget_s=sweep.time_budget_s,
            # A finished trial's process (Python, Ray, hfray's trial imports, its report queue) runs the next trial:
            # one process boot fewer per trial (bench/results/sweep_trials_cpu.md); not for PBT, PB2, HyperBand.
            reuse_actors=reuses_actors(sweep),
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=plan.sweep_name,
            storage_path=job.storage.path,
            failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
            # PBT copies a donor's latest checkpoint while the donor trains on: keep a few so it is still there.
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=4 if plan.needs_tune_checkpoints else None),
            callbacks=tune_callbacks(job, plan.sweep_name),  # MLflow, one run per trial
            verbose=1,
        ),
    )


def overlaps_checks(job: JobConfig) -> bool:
    """Whether the sweep's checks run while Ray starts (as ``hfray train``'s do: ``cluster.overlap_checks``); not in
    a process already connected (nothing to overlap) nor under ``ray job submit`` (hfray.train.driver says why)."""
    return job.cluster.overlap_checks and not ray.is_initialized() and RAY_JOB_ENV not in os.environ


def sweep_finished(sweep_dir: str) -> bool:
    """Whether the sweep in ``sweep_dir`` wrote its summary (it ran to the end)."""
    return fs.exists(fs.join(sweep_dir, layout.SWEEP_SUMMARY))


def finished_already(job: JobConfig) -> bool:
    """Without ``--fresh``: whether the job's latest sweep has its summary, which re-running it returns without Ray
    (so the checks need not overlap a cluster's start). Cheap: storage resolved, no data read."""
    storage = resolve_storage(job).storage.path
    latest = latest_run(storage, sweep_name(job), False, lambda _: True)  # without fresh: a lookup, nothing written
    return sweep_finished(fs.join(storage, latest))


def prepare_while_connecting(job: JobConfig, fresh: bool) -> tuple[JobConfig, SweepPlan, str, int]:
    """:func:`prepare_sweep` in a thread while this one connects (a local cluster boots, warm workers import the
    training stack): their times overlap. A failed check is raised once connected, before any trial starts."""
    in_process = in_process_trials(job)  # its own config errors come before Ray
    box: dict[str, Any] = {}

    def checks() -> None:
        try:
            box["prepared"] = prepare_sweep(job, fresh)
        except BaseException as exc:  # raised in the driver's thread, below
            box["error"] = exc

    thread = threading.Thread(target=checks, name="hfray-sweep-checks", daemon=True)
    thread.start()
    where, concurrent = connect_sweep(job, in_process)  # raised at once: the checks thread is a daemon
    thread.join()
    if "error" in box:
        raise box["error"]
    return (*box["prepared"], where, concurrent)


def reuses_actors(sweep: Any) -> bool:
    """``sweep.reuse_actors``, except for schedulers that restore checkpoints into trials (PBT, PB2, HyperBand): with
    the reuse path, PBT's slow test saw no exploit (its donor had no checkpoint yet); they keep a process per trial."""
    return bool(sweep.reuse_actors and not sweep.restores_checkpoints)


def in_process_trials(job: JobConfig) -> bool:
    """``sweep.trial_in_process``: whether each trial trains in its Tune trial process (:mod:`hfray.train.local`);
    ``always`` where that cannot be is a config error naming why."""
    sweep = job.sweep
    assert sweep is not None
    why = []
    if job.resources.num_workers != 1:
        why.append(f"resources.num_workers is {job.resources.num_workers} (one worker trains in process)")
    if sweep.restores_checkpoints:
        why.append(f"the {sweep.scheduler.type} scheduler restores checkpoints into trials")
    if recipe_for(job.task).ray_datasets is not None:
        why.append(f"{job.task} streams Ray Data to its workers")
    if sweep.trial_in_process == "always" and why:
        raise ConfigError([Problem("sweep.trial_in_process", f"'always' cannot be met: {'; '.join(why)}")])
    return sweep.trial_in_process != "never" and not why


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def fit_sweep(tuner: Any) -> Any:
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


def refit_refused(task: str) -> str:
    """Why ``sweep.refit`` cannot refit ``task``: a refit retrains on the train and validation rows that the
    recipe's checks prepared on the driver (the recipes that prepare a trial's data there, ``trial_data``)."""
    refits = [t for t in RECIPES if recipe_for(t).sweepable and recipe_for(t).trial_data is not None]
    listed = ", ".join(refits)
    return f"a refit retrains on the rows split on the driver, for {listed}; {task} jobs read theirs on the workers"


def check_sweepable(job: JobConfig) -> None:
    """The job has a sweep section, its task is one hfray sweeps, and a refit can retrain it."""
    if job.sweep is None:
        raise ConfigError([Problem("sweep", "hfray sweep needs a sweep: section (parameters, search, scheduler)")])
    recipe = recipe_for(job.task)
    if not recipe.sweepable:
        raise ConfigError(
            [Problem("task", f"hfray sweep does not sweep {job.task!r} jobs yet; train it with hfray train")]
        )
    if job.sweep.refit and recipe.trial_data is None:
        raise ConfigError([Problem("sweep.refit", refit_refused(job.task), True, True)])


def prepare_sweep(job: JobConfig, fresh: bool = False) -> tuple[JobConfig, SweepPlan]:
    """Every check that needs no trial: the space, the metric, data, tokenizer and model config."""
    check_sweepable(job)
    assert job.sweep is not None
    recipe = recipe_for(job.task)
    name = sweep_name(job)  # from the job as written, before paths are resolved
    notes = []
    if job.sweep.restores_checkpoints and job.training.checkpoint_every_n_evals != 1:
        raw = job.to_dict()
        raw["training"]["checkpoint_every_n_evals"] = 1
        job = JobConfig.from_dict(raw)
        notes.append(f"{job.sweep.scheduler.type} restores checkpoints: training.checkpoint_every_n_evals set to 1")
    job, note = refit_validation(job, lambda: len(load_source(job.data.train, job.data, "data.train")))
    notes += [note] if note else []
    edges = check_space(job)
    in_process = in_process_trials(job)
    job, prepared = recipe.preflight(job, True)
    storage = job.storage.path
    name = latest_run(storage, name, fresh, lambda n: sweep_finished(fs.join(storage, n)))
    plan = make_plan(job, prepared, name, edges)
    plan.artifact_fields = recipe.artifact_fields(job)
    plan.in_process = in_process
    if job.sweep.scheduler.type in ("asha", "median") and job.sweep.scheduler.stop_no_skill and plan.mode == "max":
        plan.no_skill = holdout.no_skill(job, prepared, plan.metric)
    plan.notes = notes + plan.notes
    return job, plan


def _interrupted(rows: list[Any], expected: int, budget_hit: bool) -> bool:
    """Tune returns normally after SIGINT and may mark cut-off trials TERMINATED (its ``done`` flag is not
    reliable either): a trial ended only if it completed (exported its artifact), a scheduler stopped it (the
    decision log), or it failed. Anything else, or trials never created, means the sweep was interrupted.
    """
    if budget_hit:
        return False
    return any(r.stop_reason.startswith("not finished") for r in rows) or len(rows) < expected


def _finished_summary(plan: SweepPlan, started: float) -> SweepSummary:
    summary = json.loads(fs.read_text(fs.join(plan.sweep_dir, layout.SWEEP_SUMMARY)))
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


def _check_restorable(plan: SweepPlan, resume: bool) -> bool:
    """Whether to resume: ``--resume``, or an interrupted sweep of this job resubmitted as a Ray job (a stopped job,
    submitted again, continues where it stopped: finished trials are kept, unfinished ones resume)."""
    exists = fs.exists(fs.join(plan.sweep_dir, layout.TUNER_STATE))
    if exists and not resume and RAY_JOB_ENV in os.environ:
        print(f"[hfray] sweep {plan.sweep_name} was interrupted: resuming it (a resubmitted Ray job resumes)")
        return True
    if exists and not resume:
        raise HfrayError(
            f"sweep {plan.sweep_name} was interrupted before it finished ({plan.sweep_dir}): "
            "pass --resume to continue it (finished trials are kept) or --fresh to start a new sweep"
        )
    if resume and not exists:
        raise HfrayError(f"--resume: no interrupted sweep of this job at {plan.sweep_dir}")
    return resume


def drop_trial_local_files(trials_storage: str, runs: list[str]) -> None:
    """The trials' node-local folders on this node once Tune is done (HF's checkpoint folders: ~0.5 GB a MiniLM
    trial): an ASHA-stopped trial's workers are killed before their own clean-up (train.worker.drop_local_copies).
    Storage holds every checkpoint kept; workers of trials on other nodes keep theirs."""
    for run in runs:
        shutil.rmtree(local_root(trials_storage, run), ignore_errors=True)


def run_sweep(job: JobConfig, resume: bool = False, fresh: bool = False) -> SweepSummary:
    """Sweep a job end to end: checks, trials on Ray Tune, best checkpoint exported, report written."""
    started = time.time()
    check_sweepable(job)
    where: str | None = None  # where the sweep runs, once connected
    if overlaps_checks(job) and (fresh or not finished_already(job)):
        job, plan, where, plan.max_concurrent = prepare_while_connecting(job, fresh)
    else:
        job, plan = prepare_sweep(job, fresh)
    if sweep_finished(plan.sweep_dir):
        return _finished_summary(plan, started)
    resume = _check_restorable(plan, resume)
    if where is None:
        where, plan.max_concurrent = connect_sweep(job, plan.in_process)
    sweep = job.sweep
    assert sweep is not None
    print(
        f"[hfray] sweep {plan.sweep_name}: {sweep.search} search, {sweep.scheduler.type} scheduler, "
        f"metric {plan.metric} ({plan.mode}), up to {plan.max_concurrent} trials at once, on {where}"
    )
    print(f"[hfray] {results.scheduler_line(sweep.scheduler.type, plan)}")
    for note in plan.notes:
        print(f"[hfray] note: {note}")
    fit_started = time.time()
    grid = fit_sweep(build_tuner(job, plan, resume))
    budget_hit = bool(sweep.time_budget_s and time.time() - fit_started >= 0.98 * sweep.time_budget_s)
    rows = results.trial_rows(grid, plan, budget_hit)
    drop_trial_local_files(plan.trials_storage, [run for r in rows for run in r.runs])
    if _interrupted(rows, expected_trials(sweep), budget_hit):
        raise SweepInterrupted(
            f"sweep {plan.sweep_name} interrupted; finished trials and checkpoints are kept. "
            f"Continue it with: hfray sweep <job> --resume   (state: {plan.sweep_dir})"
        )
    best = results.best_row(rows, plan.mode)
    artifact = results.export_best(best, plan) if best else None
    choice = check_choice(job, rows, best, artifact, plan)  # noise of the choice, data.test, sweep.refit
    artifact = choice.artifact
    extra = {
        **choice.summary,
        "artifact": artifact,
        "scheduler": sweep.scheduler.type,
        "search": sweep.search,
        "wall_seconds": round(time.time() - started, 1),
    }
    results.write_report(rows, plan, best, extra, choice.sections)
    sweep_curves(job, plan.trials_storage, [run for r in rows for run in r.runs])
    trials = [results.row_dict(r) for r in rows]
    best_dict = results.row_dict(best) if best else None
    return SweepSummary(
        plan.sweep_name, plan.sweep_dir, artifact, best_dict, trials, time.time() - started, where, notes=plan.notes
    )
