"""Training any :mod:`hfray.tasks` task on Ray Train: the driver's checks and the per-worker function.

``hfray.train`` calls :func:`preflight_task_driver` from its ``preflight_driver`` and runs
:func:`task_train_fn_per_worker` in its ``TorchTrainer`` for these tasks, so ``hfray train``,
``hfray validate`` and ``hfray sweep`` need nothing else. Per worker: the task's features, model,
collator and metrics go into the task's Trainer class (``Trainer`` / ``Seq2SeqTrainer``); resume,
Ray reporting at every evaluation, rank-aware checkpoints and the slim export are ``hfray.train``'s.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import ray
import ray.train

from hfray import adapters, checkpoints, data, export, modeling, tracking
from hfray.config import JobConfig
from hfray.errors import HfrayError
from hfray.hf_args import build_kwargs, job_hyperparams_callback
from hfray.reporting import report_callback_per_worker
from hfray.tasks import get_task
from hfray.tasks.data import prepare_task_data
from hfray.train import (
    _final_eval_metrics_per_worker,
    _localize_best_per_worker,
    _resume_dir_per_worker,
)

# ----------------------------------------------------------------------------- driver


def preflight_task_driver(job: JobConfig) -> data.PreparedData:
    """Data (columns, every row's shape, labels), tokenizer and model config: before any worker starts.

    ``job`` has its sources resolved already (``hfray.train.preflight_driver``).
    """
    spec = get_task(job.task)
    prepared = prepare_task_data(job, spec)
    tokenizer = modeling.load_tokenizer(job.model)
    spec.check_model_driver(job, tokenizer, prepared.labels)
    return prepared


# ----------------------------------------------------------------------------- per worker


def split_metrics_trainer(base: type) -> type:
    """``base`` (a Trainer class) computing each evaluated split's own metrics, chosen by metric prefix.

    QA metrics need the split's contexts and window offsets, so ``evaluate(test, metric_key_prefix="test")``
    must not score test logits against validation windows.
    """

    class SplitMetricsTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, metrics_by_prefix: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(*args, compute_metrics=metrics_by_prefix.get("eval"), **kwargs)
            self.metrics_by_prefix = metrics_by_prefix

        def evaluate(
            self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval", **kw: Any
        ):
            self.compute_metrics = self.metrics_by_prefix.get(metric_key_prefix, self.metrics_by_prefix.get("eval"))
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kw)

    return SplitMetricsTrainer


def _callbacks_per_worker(job: JobConfig, resumed_step: int, local_root: str, rank: int, resumed: bool) -> list[Any]:
    from transformers import EarlyStoppingCallback

    callbacks: list[Any] = [report_callback_per_worker(job, resumed_step, local_root, rank)]
    callbacks += tracking.callbacks_per_worker(job, job.name)
    if resumed:
        callbacks.append(job_hyperparams_callback())  # a PBT exploit's new learning rate wins over the donor's
    t = job.training
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    return callbacks


def _manifest_per_worker(
    job: JobConfig, spec: Any, loop_config: dict[str, Any], trainer: Any, final: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    state = trainer.state
    return {
        "format": 1,
        "task": spec.pipeline_task(job),  # what transformers.pipeline calls it: hfray predict/serve use this
        "hfray_task": job.task,
        "name": job.name,
        "run_name": loop_config["run_name"],
        "labels": loop_config["labels"],
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "best": {
            "step": state.best_global_step,
            "metric": trainer.args.metric_for_best_model,
            "value": state.best_metric,
        },
        "global_step": state.global_step,
        **extra,
        **spec.manifest_extras(job),
        "job": job.to_dict(),
        "versions": checkpoints.library_versions(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _check_fingerprint_per_worker(prepared: data.PreparedData, expected: str, rank: int) -> None:
    if prepared.fingerprint != expected:
        raise HfrayError(
            f"data on worker rank {rank} differs from what the driver checked (fingerprint "
            f"{prepared.fingerprint} != {expected}): every node must see the same files"
        )


def _model_and_features_per_worker(job: JobConfig, spec: Any, loop_config: dict[str, Any], rank: int) -> tuple:
    """(data, tokenizer, model, features): the same data the driver checked, or a loud failure."""
    from transformers import set_seed

    prepared = prepare_task_data(job, spec)
    _check_fingerprint_per_worker(prepared, loop_config["data_fingerprint"], rank)
    tokenizer = modeling.load_tokenizer(job.model)
    set_seed(job.training.seed)  # before the model exists: a fresh head (or a whole model) is randomly initialised
    model = spec.build_model(job, tokenizer, loop_config["labels"])
    return prepared, tokenizer, model, spec.encode(prepared.splits, tokenizer, job, loop_config["labels"])


def task_train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    import torch
    from transformers import PrinterCallback

    job = JobConfig.from_dict(loop_config["job"], source="job (on worker)")
    spec, local_root = get_task(job.task), loop_config["local_root"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    prepared, tokenizer, model, encoded = _model_and_features_per_worker(job, spec, loop_config, rank)
    base_copy = os.path.join(local_root, "peft-base") if rank == 0 else None
    model, peft_info = adapters.apply_peft_per_worker(model, job, base_copy)  # no-op without a peft section
    use_gpu = job.resources.gpus_per_worker > 0
    args = spec.training_args(build_kwargs(job, os.path.join(local_root, "hf"), use_gpu), job)
    resume_dir, resumed_step = _resume_dir_per_worker(local_root, loop_config.get("init_checkpoint"), rank)
    if resume_dir and job.evaluation.load_best_model_at_end:
        _localize_best_per_worker(resume_dir, ctx.get_local_rank())
    trainer = split_metrics_trainer(spec.trainer_class())(
        model=model,
        args=args,
        train_dataset=encoded.train,
        eval_dataset=encoded.evals["validation"],
        processing_class=tokenizer,
        data_collator=spec.collator(tokenizer, model, job),
        metrics_by_prefix=encoded.metrics,
        callbacks=_callbacks_per_worker(job, resumed_step, local_root, rank, bool(resume_dir)),
    )
    trainer.remove_callback(PrinterCallback)  # hfray's callback prints one concise line per log/eval
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_dir)
    final = _final_eval_metrics_per_worker(trainer, encoded.evals["validation"])
    if "test" in encoded.evals:
        final.update(trainer.evaluate(encoded.evals["test"], metric_key_prefix="test"))
    extra = {
        "resumed_from_step": resumed_step,
        "train_seconds_this_attempt": round(time.time() - started, 2),
        "data": {"fingerprint": prepared.fingerprint, "sizes": prepared.sizes},
        "peft": peft_info,  # method, trainable/all parameter counts; None without a peft section
    }
    spec.prepare_export(trainer.accelerator.unwrap_model(trainer.model), job)
    manifest = _manifest_per_worker(job, spec, loop_config, trainer, final, extra)
    # Every rank: under ZeRO-3/FSDP (training.strategy) the weights are gathered from all of them.
    export.export_artifact_per_worker(
        trainer, tokenizer, loop_config["artifact_uri"], manifest, f"{local_root}/artifact", rank, base_copy
    )
