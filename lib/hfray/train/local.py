"""A one-worker run in the calling process: Ray Train V2's local mode, with what a Train run keeps for hfray kept.

Ray 2.60 runs ``DataParallelTrainer.fit()`` in the caller's process when ``ScalingConfig(num_workers=0)``
(``ray/train/v2/api/data_parallel_trainer.py``: ``running_in_local_mode``, ``_get_local_controller``): no Train
controller actor, no worker actor, so none of their boots and torch/transformers imports. In a reused Tune trial
process (``sweep.reuse_actors``) the previous trial already imported the training stack.

Ray's local mode keeps less than a Train run (``ray/train/v2/_internal/execution/train_fn_utils.py``,
``LocalTrainFnUtils``; ``.../local_mode/utils.py``, ``LocalController``): ``report`` only keeps the last metrics and
checkpoint object in memory (nothing is copied to storage, no retention), ``get_checkpoint`` is that object (None at
the start: no resume from storage), ``get_all_reported_checkpoints`` is empty, ``get_context().get_storage()`` raises,
``RunConfig.callbacks`` and ``FailureConfig`` are not used. hfray needs all of these, so :class:`InProcessFnUtils`
(Ray's ``LocalTrainFnUtils``, set by :class:`InProcessController`) adds them back, in hfray's terms:

* every reported checkpoint is put in the run's storage folder as Ray names it (``<run>/checkpoint_step_...``)
  before the report counts: moved (a rename, no bytes copied) when its local folder is left to the run (Ray's
  ASYNC upload mode, hfray's ``storage.async_upload``) and storage is a local path on the same filesystem, else
  copied; ``storage.num_to_keep`` by the best metric as Ray's checkpoint manager keeps them (the
  latest is always kept, for a resume);
* the run's ``UserCallback`` s (the metrics log, tracking, a sweep's report to Tune) get every report, with the
  stored checkpoint, as the Train controller would call them;
* a run starts from its latest stored checkpoint (from its metrics log), so a restarted run resumes;
* a failure other than a user error (``HfrayError``) runs the function again, from the latest checkpoint, up to
  ``storage.max_failures`` times, as Ray's failure policy;
* :func:`stop_requested`: a caller that must end the run early (a sweep's scheduler) says so; the worker's HF
  callback (:func:`stop_callback`) raises :class:`RunStopped` at the next step. Nothing is exported then.

One worker only: no process group (Ray's own local mode starts one only under torchrun), rank 0 of 1. Ray Data
datasets are not supported here (a streaming recipe's shards are iterators of a worker group).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray.train
from ray.train.v2._internal.execution.local_mode.utils import LocalController
from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

from hfray import timeline
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.errors import HfrayError
from hfray.storage import fs, layout
from hfray.storage.retry import retrying
from hfray.train import session
from hfray.train.failures import Trainer

# Ray's local mode logs each report at INFO ("Reported metrics: {...}", every logging step, into the run's log):
# the run's metrics log (hfray_metrics.jsonl) has them already.
logging.getLogger(LocalTrainFnUtils.__module__).setLevel(logging.WARNING)

_STOP: list[Callable[[], bool]] = []  # the running in-process run's stop test (one run per process at a time)


class RunStopped(Exception):
    """The in-process run ended early because its caller asked (:func:`stop_requested`)."""


def stop_requested() -> bool:
    return bool(_STOP and _STOP[0]())


def stop_callback() -> Any:
    """An HF ``TrainerCallback`` that raises :class:`RunStopped` at the end of the step when the caller asked."""
    from transformers import TrainerCallback

    class StopWhenAsked(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if stop_requested():
                raise RunStopped(f"stopped at step {state.global_step}")

    return StopWhenAsked()


class InProcessFnUtils(LocalTrainFnUtils):
    """Ray's local-mode train-function utilities plus storage, retention, callbacks and resume (module doc)."""

    def __init__(self, run_config: Any, run_dir: str, callbacks: list[Any], retry_s: float) -> None:
        super().__init__(experiment_name=run_config.name)
        self.run_dir = run_dir
        self.callbacks = callbacks
        self.retry_s = retry_s
        ckpt = run_config.checkpoint_config
        self.num_to_keep = ckpt.num_to_keep
        self.score_key, self.score_max = ckpt.checkpoint_score_attribute, ckpt.checkpoint_score_order == "max"
        self.kept: list[tuple[dict[str, Any], ray.train.Checkpoint]] = stored_checkpoints(run_dir)
        self._last_checkpoint = self.kept[-1][1] if self.kept else None

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, checkpoint_dir_name: str | None = None,
               checkpoint_upload_mode: Any = None, delete_local_checkpoint_after_upload: bool | None = None,
               checkpoint_upload_fn: Any = None, validation: Any = False) -> None:  # fmt: skip
        stored = None
        if checkpoint is not None:
            drop_local = delete_local_checkpoint_after_upload
            if drop_local is None:  # as Ray's upload: an ASYNC checkpoint's folder is left to us
                drop_local = checkpoint_upload_mode == ray.train.CheckpointUploadMode.ASYNC
            stored = self._store(checkpoint, checkpoint_dir_name or f"checkpoint_{len(self.kept):06d}", drop_local)
            self._retain(metrics, stored)
        super().report(metrics, stored)
        if stored is None:
            self._last_checkpoint = self.kept[-1][1] if self.kept else None
        for callback in self.callbacks:
            callback.after_report(None, [dict(metrics)], stored)

    def _store(self, checkpoint: Any, name: str, move: bool) -> ray.train.Checkpoint:
        """The checkpoint in the run's storage folder; ``move``: its local folder is ours, so on a local storage path
        it is renamed into place (no copy: the report waits for this), else copied and removed."""
        uri = fs.join(self.run_dir, name)
        place = fs.move_dir if move else fs.upload_dir
        retrying(lambda: place(checkpoint.path, uri), f"upload of checkpoint {name}", self.retry_s)
        filesystem, path = fs.filesystem(uri)
        return ray.train.Checkpoint(path, filesystem)

    def _retain(self, metrics: dict[str, Any], stored: ray.train.Checkpoint) -> None:
        self.kept = [(m, c) for m, c in self.kept if c.path != stored.path] + [(dict(metrics), stored)]
        if not self.num_to_keep or len(self.kept) <= self.num_to_keep:
            return
        latest = self.kept[-1]  # Ray's checkpoint manager: the best num_to_keep, and the latest (for a resume)
        best = sorted(self.kept, key=self._score, reverse=True)[: self.num_to_keep]
        drop = [entry for entry in self.kept if entry is not latest and not any(entry is b for b in best)]
        self.kept = [entry for entry in self.kept if not any(entry is d for d in drop)]
        for _, ckpt in drop:
            fs.remove_tree(fs.uri_of(ckpt.filesystem, ckpt.path))

    def _score(self, entry: tuple[dict[str, Any], Any]) -> float:
        """Higher is better; without a score attribute, newer is better (Ray's order too)."""
        if self.score_key is None:
            return float(next(i for i, e in enumerate(self.kept) if e is entry))
        value = entry[0].get(self.score_key)
        if not isinstance(value, (int, float)):
            return float("-inf")
        return float(value) if self.score_max else -float(value)

    def get_all_reported_checkpoints(self, consistency_mode: Any = None, timeout_s: Any = None) -> list[Any]:
        from ray.train.v2.api.reported_checkpoint import ReportedCheckpoint, ReportedCheckpointStatus

        return [ReportedCheckpoint(c, m, ReportedCheckpointStatus.COMMITTED) for m, c in self.kept]


def stored_checkpoints(run_dir: str) -> list[tuple[dict[str, Any], ray.train.Checkpoint]]:
    """The run's checkpoints in storage, oldest first, with their reports (its metrics log): what a resume sees."""
    found: dict[str, tuple[dict[str, Any], ray.train.Checkpoint]] = {}
    for record in read_metrics_log(layout.metrics_log_uri(run_dir)):
        uri = record.get("checkpoint_path")
        if uri and fs.exists(uri):
            filesystem, path = fs.filesystem(uri)
            found.pop(uri, None)
            found[uri] = (record, ray.train.Checkpoint(path, filesystem))
    return list(found.values())


class InProcessController(LocalController):
    """Ray's ``LocalController`` that sets :class:`InProcessFnUtils` and retries failures (``FailureConfig``)."""

    def __init__(self, run_config: Any, retry_s: float) -> None:
        super().__init__(experiment_name=run_config.name)
        self.run_config = run_config
        self.retry_s = retry_s

    def run(self, train_func: Callable[[], Any]) -> Any:
        config = self.run_config
        run_dir = layout.run_dir(config.storage_path, config.name)
        callbacks = [c for c in config.callbacks or [] if isinstance(c, ray.train.UserCallback)]
        failures = 0
        try:
            while True:
                utils = InProcessFnUtils(config, run_dir, callbacks, self.retry_s)
                set_train_fn_utils(utils)
                session.activate(utils)  # Ray's ray.train.* refuse a Tune trial's process: hfray.train.session
                try:
                    value = train_func()
                    break
                except (HfrayError, RunStopped):
                    raise
                except Exception as exc:
                    failures += 1
                    if failures > config.failure_config.max_failures:
                        raise
                    print(f"[hfray] in-process run failed ({exc!r}): attempt {failures + 1}, from its last checkpoint")
        finally:
            session.activate(None)
        timeline.mark("in_process_fit_returned", "trial")
        return ray.train.Result(metrics=utils._get_last_metrics(), checkpoint=utils.get_checkpoint(), path=run_dir,
                                error=None, return_value=value)  # fmt: skip


class InProcessTrainer(Trainer):
    """hfray's Train V2 trainer whose ``fit()`` runs in this process (``num_workers=0``: Ray's local mode)."""

    retry_s: float = 0.0

    def _get_local_controller(self) -> InProcessController:
        return InProcessController(self.run_config, self.retry_s)


def run_in_process(trainer: InProcessTrainer, should_stop: Callable[[], bool]) -> Any:
    """``trainer.fit()`` here, with ``should_stop`` as the run's stop test while it runs."""
    _STOP[:] = [should_stop]
    try:
        return trainer.fit()
    finally:
        _STOP.clear()
