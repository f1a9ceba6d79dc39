"""Fine-tuning on Ray Train: the driver (checks, TorchTrainer, summary) and the per-worker function.

The driver validates the job, the data, the model and the cluster's resources before any worker
starts. Each worker runs the Hugging Face ``Trainer`` under DDP (gloo on CPU, NCCL on GPU), reports
to Ray at every evaluation, checkpoints at saves, and resumes from Ray's latest checkpoint when Ray
restarts the worker group after a failure. Rank 0 exports the best model as a slim artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs
import ray
import ray.train

from hfray import adapters, checkpoints, cluster, data, export, modeling, start_gate, storage, timeline, tracking
from hfray.config import JobConfig
from hfray.errors import HfrayError
from hfray.hf_args import check_training_arguments_driver, job_hyperparams_callback, training_arguments
from hfray.metrics_log import MetricsLogDriver, read_metrics_log
from hfray.task_config import FINETUNE_TASKS

# ----------------------------------------------------------------------------- per worker


def _foreign_checkpoint_per_worker(checkpoint: ray.train.Checkpoint, local: str) -> str:
    """A local copy of another run's HF checkpoint (a PBT donor's), without that run's best-model record.

    HF would otherwise compare this run's evaluations with the donor's best and might load the
    donor's best checkpoint (a path on the donor's node) at the end.
    """
    shutil.rmtree(local, ignore_errors=True)
    checkpoint.to_directory(local)
    state_file = os.path.join(local, "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    state.update(best_model_checkpoint=None, best_metric=None, best_global_step=None)
    with open(state_file, "w") as f:
        json.dump(state, f)
    return local


def _resume_dir_per_worker(
    local_root: str, init_checkpoint: ray.train.Checkpoint | None, rank: int
) -> tuple[str | None, int]:
    """The HF checkpoint folder to resume from, and its step (0 when fresh).

    The run's own latest Ray checkpoint wins; without one, ``init_checkpoint`` (another run's
    checkpoint, e.g. the one a PBT exploit hands over) is the starting point.
    """
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        path, source = ckpt.path, ckpt.path  # read in place: HF only reads a checkpoint it resumes from
    elif ckpt is not None:
        path, source = ckpt.to_directory(os.path.join(local_root, "resume")), ckpt.path
    elif init_checkpoint:
        path = _foreign_checkpoint_per_worker(init_checkpoint, os.path.join(local_root, f"init-rank{rank}"))
        source = init_checkpoint.path
    else:
        return None, 0
    with open(os.path.join(path, "trainer_state.json")) as f:
        step = int(json.load(f)["global_step"])
    print(f"[hfray] resuming from checkpoint {source} at step {step}", flush=True)
    return path, step


def _localize_best_per_worker(resume_dir: str, local_rank: int) -> None:
    """HF keeps the best checkpoint as a local path; after a restart on another node it is gone.

    Fetch it back from Ray storage (retention keeps the best by the same metric), so
    ``load_best_model_at_end`` still loads the true best model.
    """
    import torch.distributed as dist

    with open(os.path.join(resume_dir, "trainer_state.json")) as f:
        best = json.load(f).get("best_model_checkpoint")
    if local_rank == 0 and best and not os.path.isdir(best):
        step = int(best.rsplit("-", 1)[-1])
        for reported in ray.train.get_all_reported_checkpoints():
            if int(reported.metrics.get("step", -1)) == step:
                reported.checkpoint.to_directory(best)
                break
    if dist.is_initialized():
        dist.barrier()


def _final_eval_metrics_per_worker(trainer: Any, validation: Any) -> dict[str, Any]:
    """Validation metrics of the model being exported.

    With load_best_model_at_end the exported weights are the best checkpoint's, whose evaluation is
    already in the log history: reuse it instead of paying for one more pass over the validation set.
    """
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_global_step:
        for entry in state.log_history:
            if entry.get("step") == state.best_global_step and "eval_loss" in entry:
                return dict(entry)
    return trainer.evaluate(validation, metric_key_prefix="eval")


def _weighted_loss(weights: list[float]) -> Any:
    import torch
    import torch.nn.functional as F

    def compute_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        w = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), weight=w, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return compute_loss


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    timeline.mark_process_start()
    timeline.mark("worker_fn_start")
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback, Trainer, set_seed

    from hfray import throughput  # transformers' Trainer stack (torch, peft): imported where it is used
    from hfray.metrics import classification_metrics_fn
    from hfray.reporting import report_callback_per_worker

    timeline.mark("worker_imports")
    gated = start_gate.wait_per_worker(loop_config)  # on a running cluster the driver checks meanwhile
    if gated is None:
        return  # the driver's checks failed: it reports why
    loop_config = gated
    timeline.mark("worker_gate_passed")
    job = JobConfig.from_dict(loop_config["job"], source="job (on worker)")
    ctx = ray.train.get_context()
    rank, local_rank = ctx.get_world_rank(), ctx.get_local_rank()
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    prepared = data.prepare(job.data)
    timeline.mark("worker_data")
    if prepared.fingerprint != loop_config["data_fingerprint"]:
        raise HfrayError(
            f"data on worker rank {rank} differs from what the driver checked (fingerprint "
            f"{prepared.fingerprint} != {loop_config['data_fingerprint']}): every node must see the same files"
        )
    labels = loop_config["labels"]
    tokenizer = modeling.load_tokenizer(job.model)
    timeline.mark("worker_tokenizer")
    set_seed(job.training.seed)  # before the model exists: a fresh head (or a whole model) is randomly initialised
    model = modeling.build_classifier(job.model, labels, tokenizer, **adapters.quantized_load_kwargs(job))
    local_root = loop_config["local_root"]
    base_copy = os.path.join(local_root, "peft-base") if rank == 0 else None
    model, peft_info = adapters.apply_peft_per_worker(model, job, base_copy)
    timeline.mark("worker_model")
    encoded = data.tokenize_for_classification(prepared.splits, tokenizer, job.data, labels)
    timeline.mark("worker_tokenized")
    args = training_arguments(job, os.path.join(local_root, "hf"), use_gpu=job.resources.gpus_per_worker > 0)
    resume_dir, resumed_step = _resume_dir_per_worker(local_root, loop_config.get("init_checkpoint"), rank)
    if resume_dir and job.evaluation.load_best_model_at_end:
        _localize_best_per_worker(resume_dir, local_rank)
    callbacks: list[Any] = [report_callback_per_worker(job, resumed_step, local_root, rank)]
    callbacks += tracking.callbacks_per_worker(job, loop_config["run_name"])
    if resume_dir:
        callbacks.append(job_hyperparams_callback())
    if job.training.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(job.training.early_stopping_patience, job.training.early_stopping_threshold)
        )
    weights = loop_config.get("class_weights")
    mean_len = data.mean_token_length(encoded["train"])
    speed = throughput.callback_for_model_per_worker(model, mean_len, round(mean_len))
    callbacks.append(speed)
    timeline.mark("worker_mean_length")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics_fn(job.evaluation.metrics),
        compute_loss_func=_weighted_loss(weights) if weights else None,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # hfray's callback prints one concise line per log/eval
    timeline.mark("worker_trainer_built")
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_dir)
    final = _final_eval_metrics_per_worker(trainer, encoded["validation"])
    if "test" in encoded:
        final.update(trainer.evaluate(encoded["test"], metric_key_prefix="test"))
    state = trainer.state
    manifest = {
        "format": 1,
        "task": job.task,
        "name": job.name,
        "run_name": loop_config["run_name"],
        "labels": labels,
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "best": {
            "step": state.best_global_step,
            "metric": args.metric_for_best_model,
            "value": state.best_metric,
        },
        "global_step": state.global_step,
        "resumed_from_step": resumed_step,
        "peft": peft_info,  # method, trainable/all parameter counts; None without a peft section
        "train_seconds_this_attempt": round(time.time() - started, 2),
        "throughput": throughput.manifest_entry(speed),
        "data": {"fingerprint": prepared.fingerprint, "sizes": prepared.sizes},
        "job": job.to_dict(),
        "versions": checkpoints.library_versions(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    stage = os.path.join(local_root, "artifact")
    # Every rank: under ZeRO-3/FSDP the weights are gathered from all of them.
    export.export_artifact_per_worker(trainer, tokenizer, loop_config["artifact_uri"], manifest, stage, rank, base_copy)


# ----------------------------------------------------------------------------- driver


@dataclass
class RunSummary:
    run_name: str
    run_dir: str
    artifact: str
    manifest: dict[str, Any]
    wall_seconds: float
    cluster: str
    reused: bool = False
    checkpoints: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})


def resolve_sources_driver(job: JobConfig) -> JobConfig:
    """Absolute paths for data and models: Ray workers do not share the driver's working dir."""
    raw = job.to_dict()
    for split in ("train", "validation", "test"):
        raw["data"][split] = data.absolute_source(raw["data"][split])
    raw["model"]["name_or_path"] = modeling.absolute_model_source(raw["model"]["name_or_path"])
    raw["model"]["tokenizer"] = modeling.absolute_model_source(raw["model"]["tokenizer"])
    _resolve_storage(raw, job.storage.endpoint_url)
    return JobConfig.from_dict(raw)


def _resolve_storage(raw: dict[str, Any], endpoint_url: str | None) -> None:
    """In place: the storage path as Ray wants it, this process pointed at its endpoint, the path reachable."""
    raw["storage"]["path"] = checkpoints.normalize_storage(raw["storage"]["path"])
    storage.activate_driver(raw["storage"]["path"], endpoint_url)
    storage.check_reachable_driver(raw["storage"]["path"])


def resolve_storage_driver(job: JobConfig) -> JobConfig:
    """The job with its storage resolved as :func:`resolve_sources_driver` does (cheap: no data, no transformers)."""
    raw = job.to_dict()
    _resolve_storage(raw, job.storage.endpoint_url)
    return JobConfig.from_dict(raw)


def preflight_driver(job: JobConfig) -> tuple[JobConfig, data.PreparedData]:
    """Everything that can be checked without Ray: config, data, tokenizer and model config."""
    check_training_arguments_driver(job)
    job = resolve_sources_driver(job)
    if job.task in FINETUNE_TASKS:  # token-classification, question-answering, seq2seq: hfray.tasks
        from hfray.tasks.runner import preflight_task_driver

        return job, preflight_task_driver(job)
    prepared = data.prepare(job.data)
    timeline.mark("driver_data_checked", "driver")
    tokenizer = modeling.load_tokenizer(job.model)
    config = modeling.load_config(job.model, **modeling.classification_overrides(prepared.labels, tokenizer))
    timeline.mark("driver_tokenizer_model_checked", "driver")
    adapters.check_peft_driver(job, config.model_type)
    if isinstance(job.training.class_weights, list) and len(job.training.class_weights) != len(prepared.labels):
        raise HfrayError(
            f"training.class_weights: {len(job.training.class_weights)} weights for {len(prepared.labels)} "
            f"labels {prepared.labels}"
        )
    return job, prepared


def prepare_job_data(job: JobConfig) -> data.PreparedData:
    """The job's data, loaded and checked the way its task needs (text-classification or hfray.tasks)."""
    if job.task in FINETUNE_TASKS:
        from hfray.tasks import get_task
        from hfray.tasks.data import prepare_task_data

        return prepare_task_data(job, get_task(job.task))
    return data.prepare(job.data)


def _local_root(storage: str, run_name: str) -> str:
    key = hashlib.sha256(f"{storage}/{run_name}".encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), "hfray", f"{run_name}-{key}")


def _class_weights(job: JobConfig, prepared: data.PreparedData) -> list[float] | None:
    cw = job.training.class_weights
    if cw == "none":
        return None
    if cw == "balanced":
        return data.class_weights(prepared.splits["train"], job.data, prepared.labels)
    return list(cw)


def _scaling_config(job: JobConfig) -> ray.train.ScalingConfig:
    res = job.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=res.num_workers,
        use_gpu=res.gpus_per_worker > 0,
        resources_per_worker=per_worker,
        placement_strategy=res.placement_strategy,
        accelerator_type=res.accelerator_type,
    )


def unwrap_user_error(exc: Exception) -> Exception:
    """Turn Ray's wrapper around a worker's HfrayError back into that error (no traceback for users)."""
    failures = getattr(exc, "worker_failures", None) or {}
    for err in failures.values():
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, HfrayError):
                return cause
            cause = cause.__cause__ or getattr(cause, "cause", None)
            if cause is err:
                break
    return exc


def checked_values(job: JobConfig, prepared: data.PreparedData) -> dict[str, Any]:
    """What the driver's checks hand the workers (through the loop config, or ``hfray.start_gate``)."""
    return {
        "job": job.to_dict(),
        "labels": prepared.labels,
        "data_fingerprint": prepared.fingerprint,
        "class_weights": _class_weights(job, prepared),
    }


def build_trainer_driver(
    job: JobConfig,
    prepared: data.PreparedData | None,
    run_name: str,
    callbacks: list[Any] | None = None,
    init_checkpoint: ray.train.Checkpoint | None = None,
    gate: str | None = None,
) -> Any:
    """The TorchTrainer of a run; ``init_checkpoint``: start from another run's checkpoint (PBT).

    ``gate`` (a ``start_gate`` key) instead of ``prepared``: the workers get :func:`checked_values` from it.
    """
    from hfray.torch_backend import torch_trainer_driver

    storage = job.storage.path
    loop_config = {
        **(checked_values(job, prepared) if prepared is not None else {"start_gate": gate}),
        "run_name": run_name,
        "local_root": _local_root(storage, run_name),
        "artifact_uri": checkpoints.artifact_uri(storage, run_name),
        "init_checkpoint": init_checkpoint,
    }
    train_fn = train_fn_per_worker
    if job.task in FINETUNE_TASKS:  # token-classification, question-answering, seq2seq: hfray.tasks
        from hfray.tasks.runner import task_train_fn_per_worker as train_fn
    return torch_trainer_driver(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=_scaling_config(job),
        run_config=run_config_driver(job, run_name, callbacks),
    )


def run_config_driver(job: JobConfig, run_name: str, callbacks: list[Any] | None = None) -> ray.train.RunConfig:
    """Storage, retention by the best metric, failure restarts and the metrics log: shared by every task."""
    storage = job.storage.path
    return ray.train.RunConfig(
        name=run_name,
        storage_path=storage,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=job.storage.num_to_keep,
            checkpoint_score_attribute=job.evaluation.best_metric_key,
            checkpoint_score_order=job.evaluation.best_mode,
        ),
        failure_config=ray.train.FailureConfig(max_failures=job.storage.max_failures),
        callbacks=[MetricsLogDriver(checkpoints.join(storage, run_name, checkpoints.METRICS_LOG)), *(callbacks or [])],
    )


def _summary(job: JobConfig, run_name: str, started: float, where: str, reused: bool) -> RunSummary:
    run_dir = checkpoints.join(job.storage.path, run_name)
    artifact = checkpoints.artifact_uri(job.storage.path, run_name)
    kept = sorted(
        {
            r["checkpoint_path"]
            for r in read_metrics_log(checkpoints.join(run_dir, checkpoints.METRICS_LOG))
            if r.get("checkpoint_path") and checkpoints.exists(r["checkpoint_path"])
        }
    )
    return RunSummary(
        run_name,
        run_dir,
        artifact,
        checkpoints.read_manifest(artifact),
        time.time() - started,
        where,
        reused,
        kept,
    )


def fresh_run_name(name: str) -> str:
    """``--fresh``: the stable name plus the start time, so nothing of an earlier run is reused."""
    return f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_is_complete(job: JobConfig, run_name: str) -> bool:
    """A run is complete once its artifact's manifest (written last) exists."""
    artifact = checkpoints.artifact_uri(job.storage.path, run_name)
    return checkpoints.exists(checkpoints.join(artifact, checkpoints.MANIFEST))


def reuse_or_connect_driver(job: JobConfig, run_name: str, started: float) -> tuple[RunSummary | None, str]:
    """(The summary of a run already complete, "") or (None, where the job runs: connected, resources checked)."""
    if run_is_complete(job, run_name):
        return _summary(job, run_name, started, "none (run already complete)", reused=True), ""
    where = cluster.connect_driver(job.cluster)
    timeline.mark("driver_ray_connected", "driver")
    cluster.check_fits_driver(job.resources, job.cluster)
    return None, where


def fit_trainer_driver(trainer: Any) -> Any:
    """``trainer.fit()``; a worker's user error (HfrayError) is raised as itself, without Ray's wrapping."""
    try:
        return trainer.fit()
    except Exception as exc:
        unwrapped = unwrap_user_error(exc)
        if unwrapped is not exc:
            raise unwrapped from None
        raise


def run_job_driver(
    job: JobConfig,
    fresh: bool,
    preflight: Callable[[JobConfig], tuple[JobConfig, Any]],
    describe: Callable[[JobConfig, Any], str],
    build: Callable[[JobConfig, Any, str, list[Any]], Any],
    checks: Callable[[JobConfig], None] | None = None,
) -> RunSummary:
    """The skeleton every task's run shares: checks, reuse of a finished run, Ray, tracking, fit, summary.

    ``preflight`` checks and resolves the job before Ray starts and returns what ``describe`` (one line for
    the log) and ``build`` (the ``TorchTrainer``, given the run name and tracking's Train callbacks) need;
    ``checks`` run once connected (resources beyond the workers').
    """
    started = time.time()
    run_name = job.run_name  # from the job as written: resolved paths differ between machines
    job, info = preflight(job)
    timeline.mark("driver_preflight", "driver")
    if fresh:
        run_name = fresh_run_name(run_name)
    finished, where = reuse_or_connect_driver(job, run_name, started)
    if finished is not None:
        return finished
    if checks is not None:
        checks(job)
    print(f"[hfray] run {run_name}: {describe(job, info)}, on {where}", flush=True)
    with tracking.tracked_run_driver(job, run_name) as callbacks:  # TensorBoard, MLflow, learning curve
        timeline.mark("driver_tracking_started", "driver")
        trainer = build(job, info, run_name, callbacks)
        timeline.mark("driver_trainer_built", "driver")
        fit_trainer_driver(trainer)
        timeline.mark("driver_fit_returned", "driver")
    return _summary(job, run_name, started, where, reused=False)


def run_training_driver(job: JobConfig, fresh: bool = False) -> RunSummary:
    """Train a job end to end; re-running a finished job returns its results without training."""
    if start_gate.gated(job):
        from hfray.gated_run import run_gated_training_driver

        return run_gated_training_driver(job, fresh)
    return run_job_driver(
        job,
        fresh,
        preflight_driver,
        lambda job, prepared: f"{prepared.sizes} rows, {len(prepared.labels)} labels",
        lambda job, prepared, run_name, callbacks: build_trainer_driver(job, prepared, run_name, callbacks),
    )
