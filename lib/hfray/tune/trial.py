"""One sweep trial, in its Ray Tune trial process: the job with the trial's values, trained by a Ray Train run.

The Ray 2.60 way (Train V2): a Tune function trainable launches the trainer that ``hfray train`` would build
(:func:`hfray.train.launch.build_trainer`) and relays its reports to Tune (``ray.tune.report`` must run in the
trial's own thread), attaching the checkpoint when the scheduler needs one. A restored trial (PBT exploit,
HyperBand resume, failure) gets ``ray.tune.get_checkpoint()`` and starts a new Train run from it.

A trial whose run already exported its artifact is not trained again: Tune re-runs a finished trial when the sweep
driver died before its state recorded the trial as done (``hfray sweep --resume`` after a SIGKILL or a stopped
Ray job). The trial then replays its reports from the run's metrics log, and nothing of the run is written.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import tempfile
import threading
import uuid
from typing import Any

import ray
import ray.train
import ray.tune

from hfray import timeline
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.cluster import warm
from hfray.config import JobConfig
from hfray.storage import layout
from hfray.train.driver import fit, run_is_complete
from hfray.train.launch import build_trainer
from hfray.train.local import RunStopped, run_in_process
from hfray.train.recipes import recipe_for
from hfray.tune.controller import TuneBridgeCallback
from hfray.tune.space import trial_job_dict

_QUEUE: list[Any] = []  # this trial process's report queue: a reused trial actor (reuse_actors) keeps it


def report_queue() -> Any:
    """The queue the Train controller's bridge puts reports on; one actor per trial process, not per trial (empty
    between trials: the trial drains it until its fit has returned, and every put blocks until it is queued)."""
    if not _QUEUE:
        _QUEUE.append(new_queue())
    return _QUEUE[0]


def new_queue() -> Any:
    """A report queue of its own (a trial process that Tune does not reuse): an actor holding no CPU."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


def _fit_in_thread(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = fit(trainer)
    except Exception as exc:  # re-raised in the trial's own thread
        outcome["error"] = exc


# Tune reuses a trial process (reuse_actors) only once its previous trial's function has returned, and waits this
# long for it (Ray's default is 2 s); a stopped trial first aborts its Train run (stop_run).
RESET_WAIT_S = 60


class TrialEnded(Exception):
    """Tune ended this trial (a scheduler's stop, then the process's reuse for another trial)."""


def _tune_ends_trial() -> bool:
    """Whether Tune asked this trial's function to end (it does so before reusing the process for another trial).
    Ray has no public call for it: its function-trainable session's stop event, as Ray's own Tune integration reads
    the session (``ray.tune.integration.ray_train``)."""
    from ray.train._internal.session import get_session

    session = get_session()
    event = getattr(session, "stop_event", None)
    return bool(event is not None and event.is_set())


def _forward_reports(
    queue: Any, fit: threading.Thread, metric: str, attach_checkpoints: bool, run: str, reused: bool
) -> None:
    """Relay the bridge's reports to Tune until training ends (``ray.tune.report`` must run here)."""
    from ray.util.queue import Empty

    last: dict[str, Any] = {}
    while fit.is_alive() or not queue.empty():
        if reused and _tune_ends_trial():
            raise TrialEnded(run)
        try:
            item = queue.get(timeout=0.5)
        except Empty:
            continue
        # A report without the sweep metric (a bare save) carries the latest one: schedulers need it.
        last = {**last, **item["metrics"]} if metric not in item["metrics"] else dict(item["metrics"])
        ckpt = item["checkpoint"]
        metrics = {**last, "hfray_run": run, "checkpoint_path": ckpt.path if ckpt is not None else None}
        ray.tune.report(metrics, checkpoint=ckpt if (attach_checkpoints and ckpt is not None) else None)


class InProcessReport(ray.train.UserCallback):
    """An in-process trial's reports to Tune (:mod:`hfray.train.local` calls it in the trial's own thread, as the
    Train controller calls :class:`~hfray.tune.controller.TuneBridgeCallback`); a trial Tune ends stops its run here
    or at its next step."""

    def __init__(self, metric: str, attach_checkpoints: bool, run: str) -> None:
        self.metric, self.attach, self.run = metric, attach_checkpoints, run
        self.last: dict[str, Any] = {}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        item = dict(metrics[0]) if metrics else {}
        # A report without the sweep metric (a bare save) carries the latest one: schedulers need it.
        self.last = {**self.last, **item} if self.metric not in item else item
        report = {**self.last, "hfray_run": self.run, "checkpoint_path": checkpoint.path if checkpoint else None}
        ray.tune.report(report, checkpoint=checkpoint if (self.attach and checkpoint is not None) else None)
        if _tune_ends_trial():
            raise RunStopped(f"Tune ended trial run {self.run}")


def train_in_process(job: JobConfig, info: Any, run: str, context: dict[str, Any], restored: Any) -> None:
    """The trial's run in this process (``sweep.trial_in_process``): no Train controller or worker processes; a
    stop from Tune (a scheduler's) ends it at its next step, nothing exported."""
    report = InProcessReport(context["metric"], context["attach_checkpoints"], run)
    init = ray.train.Checkpoint(restored.path, restored.filesystem) if restored else None
    trainer = build_trainer(job, recipe_for(job.task), info, run, [report], init_checkpoint=init, in_process=True)
    timeline.mark("trial_trainer_built", "trial", run=run)
    try:
        run_in_process(trainer, _tune_ends_trial)
    except RunStopped as stopped:
        print(f"[hfray] trial run {run} stopped: {stopped}", flush=True)
    finally:
        gc.collect()  # the trial's model and optimizer, before this process runs the next trial
    timeline.mark("trial_fit_returned", "trial", run=run)


def replay_finished(job: JobConfig, run: str) -> bool:
    """When ``run`` (this trial's Train run) is complete: its reports to Tune again, from its metrics log, as the
    trial sent them (the sweep's report and best checkpoint read them); nothing is trained or written."""
    if not run_is_complete(job, run):
        return False
    print(f"[hfray] trial run {run} already finished (its artifact exists): replaying its reports, no training")
    last: dict[str, Any] = {}
    for record in read_metrics_log(layout.metrics_log_uri(layout.run_dir(job.storage.path, run))):
        path = record.pop("checkpoint_path", None)
        last = {**last, **record}
        ray.tune.report({**last, "hfray_run": run, "checkpoint_path": path})
    return True


def stop_run(fit: threading.Thread, stop_file: str | None) -> None:
    """Abort the trial's Train run, if still running, through its bridge (:mod:`hfray.tune.controller`), so a reused
    trial process starts its next trial with the cluster's CPUs free; then drop the reports it left queued."""
    if fit.is_alive() and stop_file is not None:
        with open(stop_file, "w"):
            pass
        fit.join(timeout=RESET_WAIT_S / 2)
        os.remove(stop_file)
    queue = report_queue()
    while not queue.empty():
        queue.get_nowait()


def sweep_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: the job with this trial's values, trained by a TorchTrainer, reported to Tune."""
    os.environ.update(context.get("env", {}))  # an in-process sweep's job variables (its job env has none)
    timeline.mark_process_start("trial")  # once per process: a reused trial actor marks it only for its first
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(RESET_WAIT_S))  # read here when Tune reuses it
    trial_id = ray.tune.get_context().get_trial_id()
    # Whether this process had the training stack imported before the trial (a warm worker: hfray.cluster.warm).
    preloaded = "transformers.trainer" in sys.modules
    timeline.mark("trial_start", "trial", run=trial_id, warm=warm.is_warm_process(), preloaded=preloaded)
    raw = trial_job_dict(context["job"], config, context["trials_storage"])
    job = JobConfig.from_dict(raw, source=f"job of trial {trial_id}")
    recipe = recipe_for(job.task)
    info = context["prepared"]
    if raw["data"] != context["job"]["data"] and recipe.trial_data is not None:  # this trial's own data
        info = recipe.trial_data(job)
    restored = ray.tune.get_checkpoint()  # a PBT donor's checkpoint, or this trial's own after a pause
    run = trial_id
    if restored is not None:
        run = f"{trial_id}-from-{hashlib.sha256(restored.path.encode()).hexdigest()[:6]}"
    if replay_finished(job, run):
        return
    if context.get("in_process"):
        train_in_process(job, info, run, context, restored)
        return
    reused = bool(context.get("reuse_actors"))  # without reuse, Ray ends a stopped trial's run with its process
    queue = report_queue() if reused else new_queue()
    stop_file = os.path.join(tempfile.gettempdir(), f"hfray-stop-{run}-{uuid.uuid4().hex[:8]}") if reused else None
    trainer = build_trainer(
        job,
        recipe,
        info,
        run,
        callbacks=[TuneBridgeCallback(queue, stop_file)],
        init_checkpoint=ray.train.Checkpoint(restored.path, restored.filesystem) if restored else None,
    )
    outcome: dict[str, Any] = {}
    fit = threading.Thread(target=_fit_in_thread, args=(trainer, outcome), daemon=True, name="hfray-fit")
    timeline.mark("trial_trainer_built", "trial", run=run)
    fit.start()
    try:
        _forward_reports(queue, fit, context["metric"], context["attach_checkpoints"], run, reused)
    except TrialEnded:  # Tune ends this trial (a scheduler's stop) while its process lives on for the next
        stop_run(fit, stop_file)
        return
    except BaseException:
        if stop_file is not None:
            stop_run(fit, stop_file)
        raise
    fit.join()
    timeline.mark("trial_fit_returned", "trial", run=run)
    if "error" in outcome:
        raise outcome["error"]
