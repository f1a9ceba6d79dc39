"""Connecting the driver to Ray (or starting a local cluster), and checking that a job fits the cluster."""

from __future__ import annotations

import os
from typing import Any

import ray

from hfray import timeline
from hfray.cluster import prewarm, warm
from hfray.config import ClusterConfig, ResourcesConfig
from hfray.errors import HfrayError, ResourceError
from hfray.storage.endpoint import runtime_env

# Train V2 is Ray 2.60's default; setting it pins the behaviour and documents intent.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

# Train V2 patches ``print`` on its workers into the root logger, which Ray's worker log config writes to the
# worker's stdout once more: every worker line reached the driver twice, and dill's ``dis`` output (it captures
# sys.stdout to read a function's globals while datasets hashes it) escaped its capture as bytecode on the console.
# Train V2 hands the variable from the driver to its controller and workers.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"
os.environ.setdefault(PRINT_PATCH_ENV, "0")

# Train V2's controller takes a worker's report only when it polls the worker group (every 2 s by default), and
# the worker's next ray.train.report blocks until then (a result queue of one). hfray reports at every evaluation,
# so each evaluation could stall training up to 2 s; the tests' short runs lost ~2 s per evaluation
# (tests/conftest.py). A user's own value of the variable wins.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.5"

# Set in the driver of a ``ray job submit`` job (its runtime env is the submitted one).
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_env(address: str) -> dict[str, str]:
    """Environment for the job's Ray processes (Train controller, workers, Tune trials) on a cluster at ``address``.

    Workers get the address too: Train V2's placement-group cleaner would otherwise auto-detect it, which fails on
    a host running more than one Ray cluster. ``auto`` leaves both to the job's own runtime_env
    (cluster/runtime_env.yaml sets the poll interval too).
    """
    env = dict(timeline.forwarded_env())  # empty unless a benchmark asked for the start-up timeline
    if address != "auto":
        env |= {"RAY_ADDRESS": address, TRAIN_POLL_ENV: os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S)}
        env[PRINT_PATCH_ENV] = os.environ[PRINT_PATCH_ENV]  # Tune trials start their runs from the cluster's env
    return env


def job_runtime_env(address: str, one_task: bool = False) -> dict[str, Any] | None:
    """The job's ``runtime_env``: :func:`job_env`'s variables, the storage endpoint and the Train workers' prewarm
    hook (:mod:`hfray.cluster.prewarm`). Under ``ray job submit`` (``auto``) the submitted runtime env rules.

    ``one_task``: a one-task run's job gets :data:`hfray.cluster.warm.RUNTIME_ENV` only, the same for every such
    job, so that Ray can hand its task a warm worker; its task sets :func:`task_variables` itself."""
    env = runtime_env(job_env(address))
    if address == "auto":
        return env or None
    if one_task:
        return dict(warm.RUNTIME_ENV)
    return prewarm.job_runtime_env(env)


def task_variables(cfg: ClusterConfig) -> dict[str, str]:
    """The variables a one-task run's task sets in its process (its job's runtime env has none of them): those the
    job's processes would get from :func:`job_runtime_env` (``cfg``'s cluster, once connected)."""
    address = cfg.address or os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address
    return dict(runtime_env(job_env(address)).get("env_vars", {}))


def attaches_to_running(address: str | None) -> bool:
    """Whether connecting uses a cluster that is already up (this process's, ``address``, ``$RAY_ADDRESS``)
    rather than starting a local one, as :func:`connect` decides."""
    return ray.is_initialized() or bool(address or os.environ.get("RAY_ADDRESS"))


def connect(cfg: ClusterConfig, one_task: bool = False, warm_workers: int = 1) -> str:
    """Attach to ``cluster.address`` / ``$RAY_ADDRESS``, or start a local cluster. Returns a description.
    ``one_task``: for a one-task run or in-process sweep trials (:func:`job_runtime_env`); a local cluster started
    here then gets ``warm_workers`` warm workers (:func:`start_local_cluster`)."""
    if ray.is_initialized():
        check_connected_size(cfg)
        return "the Ray cluster this process is already connected to"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    one_task = one_task and SUBMITTED_JOB_ENV not in os.environ  # ray job submit: the submitted runtime env rules
    if address:
        # Workers share this process's storage endpoint (never its credentials) and job_env's variables.
        try:
            ray.init(address=address, runtime_env=job_runtime_env(address, one_task), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise HfrayError(f"cluster.address: cannot connect to Ray at {address!r}: {exc}") from None
        return f"Ray cluster at {address}"
    start_local_cluster(cfg.num_cpus, cfg.num_gpus, one_task, warm_workers, **kwargs)
    return "a local Ray cluster started by hfray"


def check_connected_size(cfg: ClusterConfig) -> None:
    """``cluster.num_cpus``/``num_gpus`` size the local cluster hfray would start; a process already connected to a
    smaller cluster must not run the job there quietly (a sweep would run fewer trials at once, or none on a GPU)."""
    total = ray.cluster_resources()
    short = [
        f"cluster.{field} is {want}, the Ray cluster this process is already connected to has {total.get(key, 0):g}"
        for field, key, want in (("num_cpus", "CPU", cfg.num_cpus), ("num_gpus", "GPU", cfg.num_gpus))
        if want is not None and total.get(key, 0.0) < want
    ]
    if short:
        hint = " (call ray.shutdown() first for a local cluster of that size, or drop the setting)"
        raise ResourceError("; ".join(short) + hint)


def start_local_cluster(
    num_cpus: int | None, num_gpus: int | None, one_task: bool = False, warm_workers: int = 1, **kwargs: Any
) -> str:
    """Start a local cluster (with the dashboard: Train V2 uses the state API) whose processes know its address.

    Train V2's placement-group cleaner looks the cluster up by address auto-detection, which fails when the
    host runs another Ray cluster; then trials that Tune stops leak their workers' placement groups and later
    trials wait forever. Choosing the GCS port up front lets every worker get ``RAY_ADDRESS``.

    ``one_task`` (the job's env is :data:`hfray.cluster.warm.RUNTIME_ENV`): Ray prestarts workers for a cluster's
    first driver (its raylet gets ``--num_prestart_python_workers`` = the node's CPUs; 2 on this project's 2-core box
    whatever ``num_cpus``), each of which would import the training stack (~0.5 GB and a few CPU seconds each; up to
    16 at once on a 16-CPU GPU host, for a run that needs one): that is turned off and ``warm_workers`` are started.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    init = dict(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=job_runtime_env(address, one_task), **kwargs)
    if one_task:
        init["_system_config"] = {"prestart_worker_first_driver": False}
    try:
        init_local(init)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    if one_task and warm_workers > 0:
        warm.prestart(warm_workers)
    return address


def init_local(init_kwargs: dict[str, Any]) -> None:
    """``ray.init`` of a new local cluster. Ray gives its raylet a fixed 30 s to register with the GCS
    (``ray/_private/node.py``), which an overloaded machine can miss; that is reported without Ray's traceback.
    Not retried: the half-started GCS of the failed attempt keeps its port, and a second ``ray.init`` finds it
    and fails on a session-name mismatch (seen on this project's 2-core box)."""
    try:
        ray.init(**init_kwargs)
    except Exception as exc:  # Ray raises a bare Exception for this
        if "timed out during startup" not in str(exc):
            raise
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise HfrayError(
            f"the local Ray cluster did not start: its raylet missed Ray's 30 s start-up window (load average "
            f"{load:.1f} on {os.cpu_count()} CPUs). Retry when the machine is less busy, or start one with "
            "`ray start --head` and pass cluster.address"
        ) from None


def required_resources(res: ResourcesConfig) -> dict[str, float]:
    need = {"CPU": res.num_workers * res.cpus_per_worker}
    if res.gpus_per_worker:
        need["GPU"] = res.num_workers * res.gpus_per_worker
    return need


def check_fits(res: ResourcesConfig, cfg: ClusterConfig) -> None:
    """Fail before training when the cluster cannot host the workers (placement would wait forever)."""
    if not cfg.check_resources:
        return
    total = ray.cluster_resources()
    problems = []
    for key, amount in required_resources(res).items():
        have = total.get(key, 0.0)
        if amount > have:
            field = "resources.gpus_per_worker" if key == "GPU" else "resources.cpus_per_worker"
            problems.append(
                f"{res.num_workers} workers x {field} need {amount:g} {key} in all, the cluster has {have:g}"
            )
    per_node = max((n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if res.gpus_per_worker > per_node and res.gpus_per_worker > 0:
        problems.append(
            f"resources.gpus_per_worker {res.gpus_per_worker:g} exceeds the largest node's {per_node:g} GPUs"
        )
    if problems:
        hint = " (set resources.num_workers lower, or cluster.check_resources=false on an autoscaling cluster)"
        raise ResourceError("resources: " + "; ".join(problems) + hint)
