"""A classification run on a running cluster whose checks overlap the Ray side's start-up (``hfray.start_gate``).

The same steps as ``train.run_job_driver``, in another order: storage, reuse of a finished run, Ray and the
cluster's resources come first, as before. Then ``fit()`` starts while a thread runs the data, tokenizer and
model checks (``train.preflight_driver``) and opens the gate with their result. If a check fails, the workers
return untrained, the run's new folder is removed, nothing is tracked, and the check's error is raised.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hfray import checkpoints, start_gate, timeline, tracking
from hfray.config import JobConfig
from hfray.train import (
    RunSummary,
    _summary,
    build_trainer_driver,
    checked_values,
    fit_trainer_driver,
    fresh_run_name,
    preflight_driver,
    resolve_storage_driver,
    reuse_or_connect_driver,
)


def _checks(job: JobConfig, run_name: str, where: str) -> Any:
    def run() -> dict[str, Any]:
        checked, prepared = preflight_driver(job)
        timeline.mark("driver_preflight", "driver")
        print(f"[hfray] run {run_name}: {prepared.sizes} rows, {len(prepared.labels)} labels, on {where}", flush=True)
        return checked_values(checked, prepared)

    return run


def _finish(thread: threading.Thread, box: dict[str, Any], run_dir: str, existed: bool) -> None:
    """After ``fit``: a failed check is raised, and the folder Ray made for the run that never trained removed."""
    thread.join()
    if "error" in box:
        if not existed:
            checkpoints.remove_tree(run_dir)
        raise box["error"]


def run_gated_training_driver(job: JobConfig, fresh: bool = False) -> RunSummary:
    started = time.time()
    run_name = job.run_name  # from the job as written: resolved paths differ between machines
    job = resolve_storage_driver(job)
    if fresh:
        run_name = fresh_run_name(run_name)
    finished, where = reuse_or_connect_driver(job, run_name, started)
    if finished is not None:
        return finished
    run_dir = checkpoints.join(job.storage.path, run_name)
    existed = checkpoints.exists(run_dir)
    gate = start_gate.StartGateDriver(run_name)
    thread, box = start_gate.check_in_background_driver(gate, _checks(job, run_name, where))
    try:
        with tracking.tracked_run_driver(job, run_name, cancelled=lambda: thread.join() or "error" in box) as cbs:
            trainer = build_trainer_driver(job, None, run_name, cbs, gate=gate.key)
            timeline.mark("driver_trainer_built", "driver")
            try:
                fit_trainer_driver(trainer)
            except BaseException:
                _finish(thread, box, run_dir, existed)  # a failed check is what went wrong, if one failed
                raise
            timeline.mark("driver_fit_returned", "driver")
            _finish(thread, box, run_dir, existed)
    finally:
        gate.close()
    return _summary(job, run_name, started, where, reused=False)
