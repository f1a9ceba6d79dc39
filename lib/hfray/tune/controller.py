"""The Train -> Tune bridge, a Ray Train ``UserCallback`` that runs in each trial's Train controller.

Ray's ``TuneReportCallback`` forwards metrics only, so schedulers that move checkpoints between trials (PBT, PB2)
or pause trials (synchronous HyperBand) would have nothing to restore. This callback hands every report, with
its checkpoint, to the trial function (:mod:`hfray.tune.trial`) through a Ray queue.
"""

from __future__ import annotations

from typing import Any

import ray.train


class TuneBridgeCallback(ray.train.UserCallback):
    """Runs in the Train controller: forwards rank 0's metrics and the checkpoint of every report."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put({"metrics": dict(metrics[0]) if metrics else {}, "checkpoint": checkpoint})
