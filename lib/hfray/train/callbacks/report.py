"""hfray's bridge between the Hugging Face Trainer and Ray Train, on every worker.

``RayReportCallback`` replaces Ray's ``RayTrainReportCallback``, which reports only at
checkpoint saves (so Tune schedulers see stale metrics), copies every checkpoint twice, and has
every rank upload the same files. Here:

* every evaluation reaches Ray (``ray.train.report``), with or without a checkpoint;
* a save reports the HF checkpoint folder, each rank uploading only the files it owns;
* every rank calls ``report`` the same number of times (Ray's report is a barrier), because the
  HF events used here fire on all ranks;
* reports carry ``step`` and ``hfray_resumed_from_step`` so resumption is visible in the metrics;
* uploads are retried while storage is down, for ``storage.retry_s`` (:mod:`hfray.storage.retry`).

The Train controller appends every report to ``<run>/hfray_metrics.jsonl``
(:class:`hfray.train.controller.MetricsLogCallback`): Ray's ``Result`` keeps only reports that came with a
checkpoint.

Imported on workers only: transformers' Trainer stack (which pulls in torch and peft) loads with this module.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import ray.train
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hfray.artifacts.checkpoints import stage_for_rank
from hfray.storage.retry import retrying
from hfray.train import session

# grpo also logs "reward": the mean reward of its latest training completions.
_TRAIN_LOG_KEYS = {
    "loss": "train_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "reward": "train_reward",
}


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray and JSON want plain numbers; drop NaN/inf so schedulers never compare against them."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
            out[key] = value
    return out


class RayReportCallback(TrainerCallback):
    def __init__(
        self,
        resumed_from_step: int,
        staging_root: str,
        verbose: bool = True,
        async_upload: bool = False,
        retry_s: float = 0.0,
    ) -> None:
        self.resumed_from_step = resumed_from_step
        self.retry_s = retry_s
        self.staging_root = staging_root
        self.verbose = verbose
        self.async_upload = async_upload
        self.latest_train: dict[str, Any] = {}
        self.pending_eval: dict[str, Any] | None = None
        self.in_training = False
        self.reports = 0
        self.device = "cpu"

    # --------------------------------------------------------------- HF events (all ranks)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.in_training = True
        self.device = args.device.type  # reported: shows where a trial really trained (cuda/cpu)
        os.makedirs(self.staging_root, exist_ok=True)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kw: Any):
        for src, dst in _TRAIN_LOG_KEYS.items():
            if logs and src in logs:
                self.latest_train[dst] = logs[src]
        if self.verbose and state.is_world_process_zero and logs and "loss" in logs:
            print(
                f"[hfray] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
                f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e}",
                flush=True,
            )

    def on_evaluate(self, args, state, control, metrics=None, **kw: Any):
        if not self.in_training:
            return  # evaluations after train() are the final ones; the worker function records them
        # Defer: if HF saves a checkpoint right after this evaluation, one report carries both.
        self.pending_eval = dict(metrics or {})
        if self.verbose and state.is_world_process_zero:
            shown = " ".join(
                f"{k.removeprefix('eval_')}={v:.4f}"
                for k, v in _clean(metrics or {}).items()
                if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
            )
            print(f"[hfray] eval @ step {state.global_step}: {shown}", flush=True)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        rank, world = args.process_index, args.world_size
        stage = stage_for_rank(folder, rank, world, self.staging_root)
        try:
            self._report(state, ray.train.Checkpoint.from_directory(stage))
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if not self.async_upload:  # an ASYNC upload deletes its stage itself, once uploaded
            shutil.rmtree(stage, ignore_errors=True)

    def on_step_begin(self, args, state, control, **kw: Any):
        self._flush(state)

    def on_epoch_begin(self, args, state, control, **kw: Any):
        self._flush(state)

    def on_train_end(self, args, state, control, **kw: Any):
        self._flush(state)
        self.in_training = False

    # --------------------------------------------------------------- reporting

    def _flush(self, state: TrainerState) -> None:
        if self.pending_eval is not None:
            self._report(state, None)

    def _report(self, state: TrainerState, checkpoint: ray.train.Checkpoint | None) -> None:
        metrics = {
            **self.latest_train,
            **(self.pending_eval or {}),
            "step": state.global_step,
            "max_steps": state.max_steps,  # the progress display (step / total, ETA); a finished trial is not "stopped"
            "epoch": state.epoch or 0.0,
            "has_checkpoint": int(checkpoint is not None),
            "hfray_resumed_from_step": self.resumed_from_step,
            "on_gpu": int(self.device == "cuda"),
            "worker_pid": os.getpid(),  # rank 0's process: ties a report to its worker's logs
            "time": time.time(),
        }
        self.pending_eval = None
        self.reports += 1
        # ASYNC: the stage holds hard links, so HF deleting or rotating its own checkpoint folder meanwhile is safe;
        # Ray sends this report (and any after it, in order) once the upload is done, and waits for the last
        # upload before the train function's end counts as finished.
        modes = ray.train.CheckpointUploadMode
        session.report(
            _clean(metrics),
            checkpoint=checkpoint,
            checkpoint_dir_name=self._dir_name(state, checkpoint),
            checkpoint_upload_mode=modes.ASYNC if checkpoint is not None and self.async_upload else modes.SYNC,
            checkpoint_upload_fn=self._upload if checkpoint is not None else None,
        )

    def _upload(self, checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
        """Ray's own upload (``persist_current_checkpoint``), retried while storage is down (``storage.retry_s``);
        a failed attempt's files are overwritten by the next, and Ray reports the checkpoint only once it is whole."""
        storage = ray.train.get_context().get_storage()
        return retrying(
            lambda: storage.persist_current_checkpoint(checkpoint, dir_name),
            f"upload of checkpoint {dir_name}",
            self.retry_s,
        )

    @staticmethod
    def _dir_name(state: TrainerState, checkpoint: ray.train.Checkpoint | None) -> str | None:
        # Named by step, so storage reads like HF's output_dir; a re-run step overwrites its own folder.
        return f"checkpoint_step_{state.global_step:08d}" if checkpoint is not None else None
