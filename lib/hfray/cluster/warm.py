"""Warm workers: Ray worker processes that have imported the training stack before a one-task run needs one
(issue 19).

Where it runs: :func:`preload` in Ray worker processes (Ray's ``worker_process_setup_hook``); :func:`prestart` on
the driver (``hfray cluster up``) and in a run's task (topping the pool up for the next run).

Why: a one-task run (``resources.launch: task``) spent most of its start-up in its task's fresh process: Ray's
worker boot, then torch, transformers and the Trainer stack imported (``bench/results/overhead_gpu_dec05_h100.md``:
the task's process alone took as long as the whole plain script on an H100 host). Ray prestarts idle workers, but
hands one only to a task whose job has the same runtime env, and an idle worker that never ran a task is bound to
no job. So:

- the driver of a one-task run connects with :data:`RUNTIME_ENV`, the same for every such run (its variables
  travel in the task's spec instead, :mod:`hfray.train.in_task`); its setup hook :func:`preload` imports
  :data:`MODULES` in every process Ray starts for the job, before the process takes a task;
- :func:`prestart` asks a node's raylet for idle workers of that runtime env; any later one-task run (any job) is
  handed one, modules imported. ``hfray cluster up`` starts one per node; each run's task starts one more on its
  node when it ends, in place of the one it used (the process of a job ends with the job).

Ray 2.60 has no public call for the last step (Anyscale's ``prestart_workers_on_local_node`` is not in open-source
Ray), so :func:`prestart` sends the raylet's own ``PrestartWorkers`` RPC, built from Ray's generated protobufs the
way Ray builds a job's runtime env, over Ray's own gRPC channel (with the cluster's token where it has one); a
failure only logs (the next run starts cold, as before).
``tests/cluster/test_warm.py`` pins this against the installed Ray.

Imports torch? Only in :func:`preload`, and not CUDA: Ray sets ``CUDA_VISIBLE_DEVICES`` when it hands the process a
GPU task, and CUDA reads it at its first use; importing torch and transformers makes no device query (checked).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

HOOK = "hfray.cluster.warm.preload"
RUNTIME_ENV: dict[str, Any] = {"worker_process_setup_hook": HOOK}
# What a one-task run's process imports before its first step, heaviest first (on 2 CPUs: 4.1 s, 535 MB resident).
MODULES = ("torch", "transformers", "transformers.trainer", "hfray.train.local")
# Until then Ray keeps an idle prestarted worker even on a node over its worker limit (num_workers_soft_limit, its
# CPUs by default); after, such a node ends it: a busy node sheds its warm workers, a quiet one keeps them.
KEEP_ALIVE_S = 600

log = logging.getLogger(__name__)


def preload() -> None:
    """Ray's worker setup hook of one-task runs: import :data:`MODULES`. A module that fails is left to the run,
    which imports it again and fails where the user sees why."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see the docstring
            return


def is_warm_process() -> bool:
    """Whether this process was started for a job with :data:`RUNTIME_ENV` (so it ran :func:`preload`)."""
    import os

    from ray._private import ray_constants

    return os.environ.get(ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR) == HOOK


def job_is_warm() -> bool:
    """Whether this connected process's job has :data:`RUNTIME_ENV`, so that Ray hands its tasks and actors warm
    workers (a process connected before hfray's driver ran, or under ``ray job submit``, has its own env)."""
    import ray

    try:
        return ray.get_runtime_context().runtime_env.get("worker_process_setup_hook") == HOOK
    except Exception:  # noqa: BLE001 - not connected, or a Ray without the call: no warm workers, nothing else
        return False


def replace_this_process() -> bool:
    """In a one-task run's process, as its run ends: one warm worker on this node in its place (the process ends
    with its job), once per process: a job that runs several tasks in one process (retries, tests) adds one, not
    one per task. Returns whether it asked."""
    global _replaced
    if _replaced or not is_warm_process():
        return False
    import ray

    _replaced = True
    return prestart(1, ray.get_runtime_context().get_node_id()) == 1


_replaced = False


def _request(count: int) -> Any:
    """The raylet's ``PrestartWorkersRequest`` for ``count`` idle workers with :data:`RUNTIME_ENV`, serialized as
    ``ray.init`` serializes a job's runtime env (Ray moves a module-path hook into an env var first)."""
    from ray._private.runtime_env.setup_hook import export_setup_func_module
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import common_pb2, node_manager_pb2
    from ray.runtime_env import RuntimeEnv

    env = export_setup_func_module(dict(RUNTIME_ENV), HOOK)
    info = get_runtime_env_info(RuntimeEnv(**env), is_job_runtime_env=True, serialize=False)
    return node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON, runtime_env_info=info, keep_alive_duration_secs=KEEP_ALIVE_S, num_workers=count
    )


def _runs_tasks(node: dict[str, Any]) -> bool:
    """A node that can run a one-task run's task (a cluster's head often has no CPUs for tasks: no warm worker)."""
    resources = node.get("Resources", {})
    return resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0


def prestart(count: int = 1, node_id: str | None = None) -> int:
    """Ask the raylets of ``node_id`` (default: every alive node with CPUs or GPUs) for ``count`` warm workers each;
    needs a connected Ray. Returns the number of nodes that accepted; never raises (a cold next run is the only
    cost)."""
    import ray
    from ray._private.grpc_utils import init_grpc_channel  # Ray's channel: its token auth when the cluster has it
    from ray.core.generated import node_manager_pb2_grpc

    accepted = 0
    try:
        request = _request(count)
        nodes = [n for n in ray.nodes() if n.get("Alive") and node_id in (None, n["NodeID"]) and _runs_tasks(n)]
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.debug("warm workers: no request for this Ray (%s)", exc)
        return 0
    for node in nodes:
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        try:
            with init_grpc_channel(address, asynchronous=False) as channel:
                node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
            accepted += 1
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.debug("warm workers: the raylet at %s refused (%s)", address, exc)
    return accepted


def main(argv: list[str] | None = None) -> None:
    """``python -m hfray.cluster.warm ADDRESS COUNT``: :func:`prestart` on every node of the cluster at ADDRESS,
    from a process of its own (:func:`hfray.cluster.local.warm_up`); prints how many nodes took the request."""
    import sys

    import ray

    address, count = (argv if argv is not None else sys.argv[1:])[:2]
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        print(prestart(int(count)))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
