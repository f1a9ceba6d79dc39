"""The Train -> Tune bridge, a Ray Train ``UserCallback`` that runs in each trial's Train controller.

Ray's ``TuneReportCallback`` forwards metrics only, so schedulers that move checkpoints between trials (PBT, PB2)
or pause trials (synchronous HyperBand) would have nothing to restore. This callback hands every report, with
its checkpoint, to the trial function (:mod:`hfray.tune.trial`) through a Ray queue.

It also ends the run when the trial asks (``stop_file`` appears): a trial process that Tune reuses for the next
trial (``reuse_actors``) does not die with the run it started, so a trial that ends early (a scheduler's stop)
aborts its run this way. Ray starts a Train controller on the node of the process that called ``fit()``, so a
local file reaches it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray.train

POLL_S = 0.5


class TuneBridgeCallback(ray.train.UserCallback):
    """Runs in the Train controller: forwards rank 0's metrics and the checkpoint of every report."""

    def __init__(self, queue: Any, stop_file: str | None = None) -> None:
        self.queue = queue
        self.stop_file = stop_file
        self.watching = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put({"metrics": dict(metrics[0]) if metrics else {}, "checkpoint": checkpoint})
        if self.stop_file and not self.watching:  # a trial is judged only after a report: watch from the first
            self.watching = True
            threading.Thread(target=self._abort_when_asked, daemon=True, name="hfray-trial-stop").start()

    def _abort_when_asked(self) -> None:
        assert self.stop_file is not None
        while not os.path.exists(self.stop_file):
            time.sleep(POLL_S)
        ray.get_runtime_context().current_actor.abort.remote()  # the Train controller's own graceful abort
