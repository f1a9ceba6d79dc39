"""Ray Train workers that import their training stack while Ray is still booting them (issue 19).

A Train worker process used to import torch and transformers' Trainer stack only once its train function ran:
after Ray's worker boot, the actor's set-up and the torch process group, one step after the other
(``bench/results/overhead_*.md``: 3-4 s of imports on 2 CPUs, 7-10 s on an H200 host). Here the import starts as
soon as the process exists, in a background thread, and overlaps what Ray does meanwhile.

How, with Ray's public pieces only:

- the job's runtime env names :data:`HOOK` as its ``worker_process_setup_hook`` (:func:`job_runtime_env`, used by
  :mod:`hfray.cluster.connect`): Ray runs it first thing in every worker process of the job;
- the hook does nothing unless the process has :data:`ENV` in its environment. Only the Train workers do: the run
  config gives them ``worker_runtime_env`` = :func:`worker_env` (``hfray.train.launch``). The Train controller,
  Tune trial processes and Ray Data tasks import nothing more;
- the worker joins the thread (:func:`wait`) before its train function runs, so the function never imports the
  same modules concurrently with it; a module that fails to import here fails again, with its error, there.

Import-light on purpose (stdlib only): it runs in every worker process of a job.
"""

from __future__ import annotations

import importlib
import os
import threading

from hfray import timeline

ENV = "HFRAY_PREWARM"
HOOK = "hfray.cluster.prewarm.setup_hook"
# On a host with fewer cores the import thread finds no idle core while Ray boots the worker: on 2 CPUs it was
# neutral to 0.3 s slower (bench/results/startup_cpu.md); a host's own value goes in this variable.
MIN_CPUS_ENV = "HFRAY_PREWARM_MIN_CPUS"
MIN_CPUS = 4

_thread: threading.Thread | None = None


def job_runtime_env(runtime_env: dict) -> dict:
    """``runtime_env`` (for ``ray.init``) with the prewarm hook; a hook the user set already is left alone."""
    return {"worker_process_setup_hook": HOOK, **runtime_env}


def worker_env(modules: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The ``worker_runtime_env`` of a Train run whose workers preload ``modules`` (in this order)."""
    return {"env_vars": {ENV: ",".join(modules)}}


def setup_hook() -> None:
    """Ray's worker set-up hook: start importing ``$HFRAY_PREWARM``'s modules in a background thread, if set and
    the host has at least ``$HFRAY_PREWARM_MIN_CPUS`` (:data:`MIN_CPUS`) cores."""
    global _thread
    names = [n for n in os.environ.get(ENV, "").split(",") if n]
    if not names or _thread is not None or (os.cpu_count() or 1) < int(os.environ.get(MIN_CPUS_ENV, MIN_CPUS)):
        return
    _thread = threading.Thread(target=_import_all, args=(names,), name="hfray-prewarm", daemon=True)
    _thread.start()


def _import_all(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the train function's own import raises it, where users see it
            return
    timeline.mark("worker_prewarmed", "prewarm")


def wait() -> None:
    """Block until the background imports are done (no-op in a process that started none)."""
    if _thread is not None:
        _thread.join()
