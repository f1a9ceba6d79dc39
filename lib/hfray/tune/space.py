"""A sweep's search space: mapped to Tune's domains, written into each trial's job, checked at its edges.

Every value a parameter can take at its edges (``low``, ``high``, each choice) is written into the
job and validated like a job file, so a space that would produce an invalid trial (a negative
learning rate, a batch size of 0, an unknown key) fails here, naming ``sweep.parameters.<key>``.
"""

from __future__ import annotations

import copy
from typing import Any

from ray import tune

from hfray.config import JobConfig
from hfray.config.sweep import Param, SweepConfig
from hfray.errors import ConfigError, HfrayError, Problem
from hfray.train.arguments import check_training_arguments

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


def check_space(job: JobConfig) -> list[JobConfig]:
    """Validate the job each edge value of each parameter produces; all problems at once. Returns those jobs."""
    assert job.sweep is not None
    base = job.to_dict()
    # The job's own problems first, once, under their own fields: otherwise a mistake no parameter touches
    # (tracking.mlflow without MLflow installed) came back once per edge value of every parameter.
    check_training_arguments(JobConfig.from_dict(trial_job_dict(base, {}, base["storage"]["path"])))
    problems: list[Problem] = []
    edges: list[JobConfig] = []
    for key, param in job.sweep.parameters.items():
        for value in edge_values(param):
            try:
                trial = JobConfig.from_dict(trial_job_dict(base, {key: value}, base["storage"]["path"]))
                check_training_arguments(trial)
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
