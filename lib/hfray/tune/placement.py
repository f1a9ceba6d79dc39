"""Where a sweep's trials run, on the driver: what one trial holds, how many fit at once (the cluster's and each
node's), and the driver's connection, with warm trial processes for in-process trials (issue 19)."""

from __future__ import annotations

import math
from typing import Any

import ray

from hfray.cluster import connect, warm
from hfray.config import JobConfig
from hfray.errors import ResourceError


def per_trial_resources(job: JobConfig) -> dict[str, float]:
    need = connect.required_resources(job.resources)
    need["CPU"] = need.get("CPU", 0.0) + job.sweep.trial_driver_cpus  # type: ignore[union-attr]
    return need


def trials_fitting(have: dict[str, float], need: dict[str, float]) -> int:
    """How many trials of ``need`` (per_trial_resources) fit in ``have`` (a cluster's or a node's resources)."""
    return min(math.floor(have.get(key, 0.0) / amount + 1e-9) for key, amount in need.items() if amount > 0)


def max_concurrent_trials(job: JobConfig) -> int:
    """How many trials the cluster runs at once (fractional GPUs let several share one GPU)."""
    need = per_trial_resources(job)
    total = ray.cluster_resources()
    fits = trials_fitting(total, need)
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


def expected_trials(sweep: Any) -> int:
    grid = [len(p.values) for p in sweep.parameters.values() if p.type == "grid" or sweep.search == "grid"]
    return sweep.num_samples * math.prod(grid)


def connect_sweep(job: JobConfig, in_process: bool) -> tuple[str, int]:
    """Connect (or start a local cluster), check that trials fit. In-process trials (and a refit run of one task)
    take warm workers; a refit as a Ray Train run needs the job env's variables in its controller and workers, so
    ``resources.launch: train`` keeps the usual env. Returns where the sweep runs and how many trials run at once."""
    warm_env = in_process and job.resources.launch != "train"
    where = connect.connect(job.cluster, one_task=warm_env, warm_workers=0)  # as many as trials fit, below
    connect.check_fits(job.resources, job.cluster)
    concurrent = max_concurrent_trials(job)
    if warm_env and warm.job_is_warm():  # no more than the sweep's trials: a big node fits many small ones
        warm_trial_processes(job, min(concurrent, expected_trials(job.sweep)))
    return where, concurrent


def warm_trial_processes(job: JobConfig, concurrent: int) -> None:
    """In-process trials: each node is asked for as many warm workers (:mod:`hfray.cluster.warm`) as trials it fits
    at once, so that Tune's first trial processes have the training stack imported while the driver sets Tune up
    (the first trial of a process was 19-23 s from its start to its first step on an H100, of which 9-11 s imports:
    ``bench/results/sweep_trials_gpu_dec05_h100.md``)."""
    need = per_trial_resources(job)
    for node in ray.nodes():
        count = min(trials_fitting(node.get("Resources", {}), need), concurrent)
        if node.get("Alive") and count > 0:
            warm.prestart(count, node["NodeID"])
