"""A one-worker run in ONE Ray task (``resources.launch: task``, ``auto``'s choice for one worker): hfray's
in-process runner, placed on the cluster.

Where it runs: on the driver, :class:`TaskTrainer` hands a Ray task that holds the worker's resources (CPUs, GPUs,
accelerator type) the run as plain data (the job as a dict, the checked values or the start gate's key, the
tracking); in the task, :func:`hfray.train.launch.trainer_in_task` re-validates the job and builds the run's
in-process trainer (:mod:`hfray.train.local`: Ray Train V2's local mode plus storage, retention, callbacks, resume
and failure retries) and calls its ``fit()``; the task returns nothing (the driver reads the run from storage, as
after a Train run). The driver imports no Ray Train or Ray Data for it (:mod:`hfray.train.launch`); with them went
pandas from its path to ``ray.init`` and the task's submission (its checks thread still imports pandas with
``datasets``): 0.4 s of imports on 2 CPUs, more on a GPU host's cold disk (issue 19).

Why: a Ray Train run boots two fresh processes one after the other, the Train controller and then the worker
(with its worker-group and process-group set-up), before the train function starts; neither can take one of
Ray's prestarted workers, because Train gives both a runtime env. One task is one process to boot
(``bench/results/overhead_cpu_dec04_late.md``). What it gives up: Train's worker-group restarts (the task is
retried by Ray instead, ``max_retries`` = ``storage.max_failures``, and resumes from the run's last checkpoint)
and Ray Data streaming (a worker group's shards), which the driver refuses before Ray starts.

Warm workers (:mod:`hfray.cluster.warm`): the job of a one-task run has one fixed runtime env (the driver's
variables travel in the spec and are set in the task's process), so Ray hands the task an idle worker that has
imported the training stack already, if the node has one (``hfray cluster up`` starts one per node); the task asks its
node for another as it ends, for the next run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ray

from hfray import timeline
from hfray.cluster import connect, warm
from hfray.config import JobConfig
from hfray.errors import ConfigError, Problem
from hfray.train.recipes.base import Recipe


def check_launch(job: JobConfig, streams_ray_data: bool) -> None:
    """``resources.launch: task`` for a task that streams Ray Data is a config error (raised before Ray starts)."""
    if job.resources.launch == "task" and streams_ray_data:
        message = f"'task' cannot run {job.task}: it streams Ray Data to a Ray Train worker group (use 'train')"
        raise ConfigError([Problem("resources.launch", message)], "job")


def resolve_launch(job: JobConfig, streams_ray_data: bool) -> JobConfig:
    """``job`` with ``resources.launch`` decided: ``auto`` is ``task`` for one worker that streams no Ray Data, else
    ``train``. Sweep trials never see ``auto`` resolved here: they train in their own process or through Train."""
    res = job.resources
    if res.launch != "auto":
        return job
    launch = "task" if res.num_workers == 1 and not streams_ray_data else "train"
    return job.model_copy(update={"resources": res.model_copy(update={"launch": launch})})


@contextlib.contextmanager
def _variables(env: dict[str, str]) -> Iterator[None]:
    """The job's variables set in this process for the run, and restored after (the job's runtime env carries none
    of them: :func:`hfray.cluster.connect.job_runtime_env`)."""
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fit_in_task(build: Callable[[dict[str, Any]], Any], spec: dict[str, Any], end_mark: str) -> None:
    warm_process = warm.is_warm_process()
    try:
        with _variables(spec.get("env", {})):
            timeline.mark_process_start("task")
            timeline.mark("task_fn_start", "task", preloaded="transformers.trainer" in sys.modules, warm=warm_process)
            build(spec).fit()  # its Result stays here: storage has the run (metrics log, checkpoints, artifact)
    finally:
        warm.replace_this_process()  # the next one-task run's process, warm (hfray.cluster.warm)
        for stream in (sys.stdout, sys.stderr):  # each stream is forwarded on its own: a mark on each
            print(f"[hfray] {end_mark}", file=stream, flush=True)


class OutputEnd:
    """Waits until Ray has forwarded the task's last output lines to this driver.

    Why: Ray forwards a task's stdout/stderr asynchronously (log monitor -> GCS -> the driver's print thread). After
    a task returns, its last lines (the final steps, the last evaluation) arrived after ``fit()`` had returned, and
    a CLI that then exited lost them from its log file (a Train run's controller shutdown used to hide the race).
    The task prints ``mark`` last on both streams; this waits for both, at most ``timeout`` seconds. It listens on
    Ray's driver-side log dispatcher (``ray._private``, no public hook exists), and does nothing where that is
    missing or the driver does not print worker logs (``log_to_driver=False``)."""

    def __init__(self, mark: str, timeout: float = 5.0) -> None:
        self.mark, self.timeout, self.seen = mark, timeout, {False: threading.Event(), True: threading.Event()}
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            dispatcher = None
        printing = dispatcher is not None and any(name == "ray_print_logs" for name, _ in dispatcher.handlers)
        self.dispatcher = dispatcher if printing else None
        if self.dispatcher is not None:
            self.dispatcher.add_handler(self.mark, self._on_lines)

    def _on_lines(self, data: dict[str, Any]) -> None:
        if any(self.mark in line for line in data.get("lines", ())):
            self.seen[bool(data.get("is_err"))].set()

    def wait(self, timeout: float | None = None) -> None:
        if self.dispatcher is None:
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            for event in self.seen.values():
                event.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self.dispatcher.remove_handler(self.mark)


class TaskTrainer:
    """``fit()`` runs the run's in-process trainer in one Ray task with the job's per-worker resources.

    ``recipe``: sent by reference (its functions' modules; the worker module is imported in the task only);
    ``values``: the checked values or the start gate's key (:func:`hfray.train.launch.loop_values`); ``callbacks``:
    the run's tracking (:class:`hfray.train.tracking.driver.Tracking`) or a trial's callbacks; all made in the task
    by ``build`` (:func:`hfray.train.launch.trainer_in_task`: given here, so this module imports no launch code).
    """

    def __init__(
        self,
        job: JobConfig,
        recipe: Recipe,
        run_name: str,
        values: dict[str, Any],
        callbacks: list[Any] | None = None,
        init_checkpoint: Any = None,
        *,
        build: Callable[[dict[str, Any]], Any],
    ) -> None:
        self.run_name, self.build = run_name, build
        self.spec = {
            "job": job.to_dict(),
            "recipe": recipe,
            "run_name": run_name,
            "values": values,
            "callbacks": list(callbacks or []),
            "init_checkpoint": init_checkpoint,
            "marks": timeline.run_marks(),  # the driver's so far, for the run's manifest
            "env": connect.task_variables(job.cluster),
        }
        res = job.resources
        self.options: dict[str, Any] = {
            "num_cpus": res.cpus_per_worker,
            "num_gpus": res.gpus_per_worker,
            "max_retries": job.storage.max_failures,  # a dead process (OOM kill, lost node): again, from storage
            "retry_exceptions": False,  # the in-process runner retries exceptions itself
            "name": f"hfray-run:{run_name}",
        }
        if res.accelerator_type:
            self.options["accelerator_type"] = res.accelerator_type

    def fit(self) -> None:
        end = OutputEnd(f"output of run {self.run_name} ends ({uuid.uuid4().hex[:8]})")
        ref = ray.remote(**self.options)(_fit_in_task).remote(self.build, self.spec, end.mark)
        try:
            ray.get(ref)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # Ctrl-C: no task left training behind the driver
                if not ray.wait([ref], timeout=0)[0]:  # a task that has raised is done: nothing to kill
                    ray.cancel(ref, force=True)
            end.wait(0 if isinstance(exc, KeyboardInterrupt) else None)  # a failure's lines belong in the log too
            raise
        end.wait()
