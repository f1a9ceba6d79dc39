"""A sweep's plan, checked on the driver before any trial starts: the search space mapped to Tune,
each trial's job, the metric, the step arithmetic schedulers need, and the concurrency.

Every value a parameter can take at its edges (``low``, ``high``, each choice) is written into the
job and validated like a job file, so a space that would produce an invalid trial (a negative
learning rate, a batch size of 0, an unknown key) fails here, naming ``sweep.parameters.<key>``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from hfray import checkpoints, data
from hfray.config import CLASSIFICATION_METRICS, JobConfig
from hfray.errors import ConfigError, HfrayError, Problem
from hfray.sweep_config import Param, SweepConfig

# ----------------------------------------------------------------------------- space


def tune_domain(param: Param) -> Any:
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "randint":
        return tune.randint(param.low, param.high + 1)  # Tune's upper bound is exclusive; ours is not
    if param.type == "choice":
        return tune.choice(param.values)
    return tune.grid_search(param.values)


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Flat: Tune's config keys are the dotted job keys (Optuna and PBT need no nesting rules)."""
    space = {key: tune_domain(p) for key, p in sweep.parameters.items()}
    if sweep.search == "grid":
        space = {k: tune.grid_search(p.values) for k, p in sweep.parameters.items()}  # type: ignore[union-attr]
    return space


def edge_values(param: Param) -> list[Any]:
    if param.type in ("choice", "grid"):
        return list(param.values)  # type: ignore[union-attr]
    return [param.low, param.high]  # type: ignore[union-attr]


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise HfrayError(f"sweep.parameters.{dotted}: {part!r} is not a section or mapping in the job")
        node = child
    node[last] = value


def trial_job_dict(base: dict[str, Any], values: dict[str, Any], trials_storage: str) -> dict[str, Any]:
    """The job a trial trains: the sweep's job with the trial's values, stored under the sweep."""
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)
    for key, value in values.items():
        set_path(raw, key, value)
    raw["storage"]["path"] = trials_storage
    raw["storage"]["run_name"] = None
    return raw


def check_space_driver(job: JobConfig) -> list[JobConfig]:
    """Validate the job each edge value of each parameter produces; all problems at once. Returns those jobs."""
    from hfray.hf_args import check_training_arguments_driver

    assert job.sweep is not None
    base = job.to_dict()
    problems: list[Problem] = []
    edges: list[JobConfig] = []
    for key, param in job.sweep.parameters.items():
        for value in edge_values(param):
            try:
                trial = JobConfig.from_dict(trial_job_dict(base, {key: value}, base["storage"]["path"]))
                check_training_arguments_driver(trial)
                edges.append(trial)
            except ConfigError as exc:
                problems += [
                    Problem(
                        f"sweep.parameters.{key}", f"value {value!r} makes an invalid job: {p.location}: {p.message}"
                    )
                    for p in exc.problems
                ]
            except HfrayError as exc:
                problems.append(Problem(f"sweep.parameters.{key}", str(exc)))
    if problems:
        raise ConfigError(problems, "job")
    return edges


# ----------------------------------------------------------------------------- metric and steps


def sweep_metric(job: JobConfig) -> tuple[str, str]:
    """The metric schedulers compare, and its mode; it must be one the task reports at evaluation."""
    sweep = job.sweep
    assert sweep is not None
    metric = sweep.metric or job.evaluation.best_metric_key
    reported = ["eval_loss", *(f"eval_{m}" for m in job.evaluation.metrics)]
    if metric not in reported:
        hint = ""
        if metric.removeprefix("eval_") in CLASSIFICATION_METRICS:
            hint = f" (add {metric.removeprefix('eval_')!r} to evaluation.metrics)"
        raise ConfigError(
            [Problem("sweep.metric", f"{job.task} jobs report {reported} at each evaluation{hint}", metric, True)]
        )
    mode = sweep.mode
    if mode is None:
        mode = (
            job.evaluation.best_mode
            if metric == job.evaluation.best_metric_key
            else ("min" if metric == "eval_loss" else "max")
        )
    return metric, mode


def steps_per_epoch(job: JobConfig, n_train: int) -> int:
    t = job.training
    batches = math.ceil(n_train / (t.per_device_train_batch_size * job.resources.num_workers))
    return max(1, batches // t.gradient_accumulation_steps)


def total_steps(job: JobConfig, n_train: int) -> int:
    if job.training.max_steps > 0:
        return job.training.max_steps
    return math.ceil(job.training.num_train_epochs * steps_per_epoch(job, n_train))


def eval_interval_steps(job: JobConfig, n_train: int) -> int:
    if job.training.eval_strategy == "steps":
        return int(job.training.eval_steps or 1)
    return steps_per_epoch(job, n_train)


def longest_trial_steps(job: JobConfig, edges: list[JobConfig], n_train: int) -> int:
    """Steps of the longest trial the space allows (``edges``: the jobs of ``check_space_driver``)."""
    return max(total_steps(j, n_train) for j in [job, *edges])


# ----------------------------------------------------------------------------- plan


@dataclass
class SweepPlan:
    sweep_name: str
    sweep_dir: str
    trials_storage: str
    base_job: dict[str, Any]
    prepared: data.PreparedData
    metric: str
    mode: str
    eval_interval: int
    max_steps: int
    needs_tune_checkpoints: bool = False
    max_concurrent: int = 1
    scheduler_log: str = ""
    notes: list[str] = field(default_factory=list)


def sweep_name(job: JobConfig) -> str:
    """From the job as written (like run names): stable across retries, unique per job and space."""
    return f"{job.run_name}-sweep"


def make_plan(job: JobConfig, prepared: data.PreparedData, name: str, edges: list[JobConfig]) -> SweepPlan:
    metric, mode = sweep_metric(job)
    sweep_dir = checkpoints.join(job.storage.path, name)
    n_train = prepared.sizes["train"]
    return SweepPlan(
        sweep_name=name,
        sweep_dir=sweep_dir,
        trials_storage=checkpoints.join(sweep_dir, checkpoints.TRIALS_DIR),
        base_job=job.to_dict(),
        prepared=prepared,
        metric=metric,
        mode=mode,
        eval_interval=eval_interval_steps(job, n_train),
        max_steps=longest_trial_steps(job, edges, n_train),
        needs_tune_checkpoints=job.sweep.restores_checkpoints,  # type: ignore[union-attr]
        scheduler_log=checkpoints.join(sweep_dir, "hfray_scheduler_decisions.jsonl"),
    )
