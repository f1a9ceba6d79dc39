"""Pre-training from scratch on Ray Train: masked LM (BERT-style) and causal LM (GPT-2/Llama-style).

Same spine as fine-tuning (``hfray.train``): the driver checks everything before Ray starts, each
worker runs the Hugging Face ``Trainer`` under DDP, reports to Ray at every evaluation, checkpoints
rank-aware, resumes from Ray's latest checkpoint, and rank 0 exports a slim artifact that loads with
``pipeline("fill-mask")`` / ``pipeline("text-generation")``. What differs:

* the model comes from ``model.architecture`` (randomly initialised) with a masked or causal LM head;
* data: ``lm.pipeline: ray-data`` tokenizes and packs on Ray Data CPU tasks and streams a disjoint
  shard to each worker (``hfray.ray_data``); ``datasets`` packs in memory on every worker;
* evaluation: held-out loss and perplexity;
* the job's ``tokenizer`` section, if any, is trained first when ``model.tokenizer`` does not exist yet.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

import ray
import ray.train

from hfray import checkpoints, export, lm_data, modeling, ray_data, timeline, tracking
from hfray.config import JobConfig
from hfray.data import absolute_source
from hfray.errors import ModelError, ResourceError
from hfray.hf_args import build_kwargs, check_training_arguments_driver
from hfray.train import (
    RunSummary,
    _final_eval_metrics_per_worker,
    _local_root,
    _localize_best_per_worker,
    _scaling_config,
    resolve_sources_driver,
    run_config_driver,
    run_job_driver,
)

PIPELINE_TASKS = {"masked-lm": "fill-mask", "causal-lm": "text-generation"}

# ----------------------------------------------------------------------------- per worker


def _resume_dir_per_worker(local_root: str) -> tuple[str | None, int]:
    """Ray's latest checkpoint as a local HF checkpoint folder, and its step (0 when fresh)."""
    import pyarrow.fs

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, 0
    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        path = ckpt.path  # read in place: HF only reads a checkpoint it resumes from
    else:
        path = ckpt.to_directory(os.path.join(local_root, "resume"))
    with open(os.path.join(path, "trainer_state.json")) as f:
        step = int(json.load(f)["global_step"])
    print(f"[hfray] resuming from Ray checkpoint {ckpt.path} at step {step}", flush=True)
    return path, step


def _training_args_per_worker(job: JobConfig, output_dir: str) -> Any:
    from transformers import TrainingArguments

    kwargs = build_kwargs(job, output_dir, use_gpu=job.resources.gpus_per_worker > 0)
    if job.lm.pipeline == "ray-data":  # type: ignore[union-attr]
        # A resumed stream starts afresh (Ray Data's order is not replayable), so skipping the
        # batches trained before the failure would only throw data away.
        kwargs["ignore_data_skip"] = True
    return TrainingArguments(**kwargs)


def _in_memory_sets_per_worker(job: JobConfig, tokenizer: Any) -> tuple[Any, Any]:
    """``lm.pipeline: datasets``: every worker packs the whole corpus; HF's sampler shards it per rank."""
    from hfray.data import load_source

    cfg, lm = job.data, job.lm
    assert lm is not None
    train = load_source(cfg.train, cfg, "data.train")
    if cfg.validation:
        held = load_source(cfg.validation, cfg, "data.validation")
    else:
        mask = lm_data.in_validation(train[cfg.text_column], cfg.validation_fraction, cfg.split_seed)
        held, train = train.select(mask.nonzero()[0]), train.select((~mask).nonzero()[0])
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        held = held.select(range(min(cfg.max_eval_samples, len(held))))
    packed = lm_data.pack_dataset(train, tokenizer, job.task, lm.block_size, cfg.text_column, "train")
    held_blocks = lm_data.pack_dataset(held, tokenizer, job.task, lm.block_size, cfg.text_column, "validation")
    return packed, held_blocks[lm_data.IDS]


def _data_per_worker(
    job: JobConfig, tokenizer: Any, collator: Any, held_out: Any = None, stream: Any = None
) -> tuple[Any, Any]:
    """(train dataset, fixed held-out set). ``stream``: this worker's started Ray Data shard (pipeline ray-data),
    returned as a torch IterableDataset once it can collate; ``held_out``: blocks the driver packed."""
    import numpy as np

    lm = job.lm
    assert lm is not None
    if stream is not None:
        stream.set_collate(lambda blocks: lm_data.collate_blocks(blocks, collator, tokenizer))
        train = ray_data.torch_stream_per_worker(stream)
        held = held_out if held_out is not None else ray_data.validation_blocks_per_worker()
    else:
        train, held = _in_memory_sets_per_worker(job, tokenizer)
    evaluation = lm_data.fixed_eval_set(
        np.asarray(held), tokenizer, job.task, lm.mlm_probability, job.training.seed, lm.masking
    )
    return train, evaluation


def _manifest_per_worker(
    job: JobConfig, loop_config: dict[str, Any], trainer: Any, final: dict[str, Any], resumed_step: int, seconds: float
) -> dict[str, Any]:
    state, t, lm = trainer.state, job.training, job.lm
    assert lm is not None
    trained_steps = state.global_step - resumed_step
    tokens = trained_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
    tokens *= job.resources.num_workers * lm.block_size
    return {
        "format": 1,
        "task": PIPELINE_TASKS[job.task],  # what transformers.pipeline calls it: hfray predict/serve use this
        "hfray_task": job.task,
        "name": job.name,
        "run_name": loop_config["run_name"],
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "best": {
            "step": state.best_global_step,
            "metric": trainer.args.metric_for_best_model,
            "value": state.best_metric,
        },
        "global_step": state.global_step,
        "resumed_from_step": resumed_step,
        "train_seconds_this_attempt": round(seconds, 2),
        "throughput": {"train_tokens_this_attempt": tokens, "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)},
        "data": {"pipeline": lm.pipeline, "block_size": lm.block_size, "eval_blocks": len(trainer.eval_dataset)},
        "model": {"parameters": sum(p.numel() for p in trainer.model.parameters())},
        "job": job.to_dict(),
        "versions": checkpoints.library_versions(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _callbacks_per_worker(job: JobConfig, resumed_step: int, local_root: str, rank: int) -> list[Any]:
    from transformers import EarlyStoppingCallback

    from hfray.reporting import report_callback_per_worker

    callbacks: list[Any] = [report_callback_per_worker(job, resumed_step, local_root, rank)]
    callbacks += tracking.callbacks_per_worker(job, job.name)
    t = job.training
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    return callbacks


def pretrain_fn_per_worker(loop_config: dict[str, Any]) -> None:
    timeline.mark_process_start()
    timeline.mark("worker_fn_start")
    job = JobConfig.from_dict(loop_config["job"], source="job (on worker)")
    lm, local_root = job.lm, loop_config["local_root"]
    assert lm is not None
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    t = job.training
    # Before the heavy imports: Ray Data's tasks start while this worker imports torch and builds the model.
    stream = None
    if lm.pipeline == "ray-data":
        stream = ray_data.start_shard_stream_per_worker(
            t.per_device_train_batch_size, lm.local_shuffle_buffer_size, t.seed + rank, lm.record_shards
        )
    import torch
    from transformers import PrinterCallback, set_seed

    from hfray import throughput  # transformers' Trainer stack (torch, peft): workers only
    from hfray.lm_trainer import LanguageModelTrainer

    timeline.mark("worker_imports")
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    tokenizer = modeling.load_tokenizer(job.model)
    timeline.mark("worker_tokenizer")
    set_seed(job.training.seed)  # before the model exists: it is randomly initialised
    model = modeling.build_language_model(job.model, job.task, tokenizer, lm.block_size)
    timeline.mark("worker_model")
    masked = job.task == "masked-lm"
    # An MLM loss needs the head at masked positions only: MFU counts those FLOPs whichever head runs.
    speed = throughput.callback_for_model_per_worker(
        model, lm.block_size, lm.block_size, lm.mlm_probability if masked else 1.0
    )
    if masked and lm.mlm_loss_on_masked_only and not modeling.mlm_loss_on_masked_only(model) and rank == 0:
        print(f"[hfray] lm.mlm_loss_on_masked_only: not supported for {model.config.model_type}; full head")
    # Seeded per rank: each worker masks its own blocks differently, reproducibly.
    collator = lm_data.make_lm_collator(tokenizer, job.task, lm.mlm_probability, job.training.seed + rank, lm.masking)
    held_out = loop_config.get("validation_blocks")
    train, evaluation = _data_per_worker(job, tokenizer, collator, held_out, stream)
    timeline.mark("worker_data")
    resume_dir, resumed_step = _resume_dir_per_worker(local_root)
    if resume_dir and job.evaluation.load_best_model_at_end:
        _localize_best_per_worker(resume_dir, ctx.get_local_rank())
    trainer = LanguageModelTrainer(
        model=model,
        args=_training_args_per_worker(job, os.path.join(local_root, "hf")),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=lm_data.BlockCollator(collator, tokenizer),
        callbacks=[*_callbacks_per_worker(job, resumed_step, local_root, rank), speed],
        train_stream=train if stream is not None else None,
    )
    trainer.remove_callback(PrinterCallback)  # hfray's callback prints one concise line per log/eval
    timeline.mark("worker_trainer_built")
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_dir)
    seconds = time.time() - started
    final = _final_eval_metrics_per_worker(trainer, evaluation)
    if stream is not None:
        ray_data.write_shard_record_per_worker(stream, loop_config["run_dir"], rank)
    manifest = _manifest_per_worker(job, loop_config, trainer, final, resumed_step, seconds)
    manifest["throughput"]["steady_state"] = throughput.manifest_entry(speed)
    stage = os.path.join(local_root, "artifact")
    # Every rank: under ZeRO-3/FSDP (training.strategy) the weights are gathered from all of them.
    export.export_artifact_per_worker(trainer, tokenizer, loop_config["artifact_uri"], manifest, stage, rank)


# ----------------------------------------------------------------------------- driver


def _tokenizer_missing(job: JobConfig) -> bool:
    return job.tokenizer is not None and not os.path.isdir(job.model.tokenizer_source)


def preflight_lm_driver(job: JobConfig, train_tokenizer: bool = True) -> tuple[JobConfig, dict[str, Any]]:
    """Config, data sources, tokenizer and model config, before Ray starts; trains the tokenizer if due.

    With ``train_tokenizer=False`` (``hfray validate``) a tokenizer not trained yet is reported, not trained.
    """
    check_training_arguments_driver(job)
    job = resolve_sources_driver(job)
    if job.tokenizer is not None and job.tokenizer.source:
        job.tokenizer.source = absolute_source(job.tokenizer.source)
    info: dict[str, Any] = {}
    sources = {"data.train": job.data.train, "data.validation": job.data.validation}
    if job.lm.pipeline == "ray-data":  # type: ignore[union-attr]
        info["formats"] = {k: ray_data.check_source_driver(v, job.data, k) for k, v in sources.items() if v}
    if _tokenizer_missing(job):
        if not train_tokenizer:
            info["tokenizer"] = f"not trained yet: 'hfray tokenizer' (or 'hfray train') writes {job.model.tokenizer}"
            return job, info
        from hfray.tokenizer_training import train_tokenizer_driver

        summary = train_tokenizer_driver(job)
        print(f"[hfray] tokenizer trained: {summary.vocab_size} tokens from {summary.texts} texts -> {summary.path}")
    timeline.mark("driver_data_checked", "driver")
    tokenizer = modeling.load_tokenizer(job.model)
    if job.task == "masked-lm" and tokenizer.mask_token is None:
        raise ModelError(f"model.tokenizer: {job.model.tokenizer_source} has no mask token; masked-lm needs one")
    config = modeling.language_model_config(job.model, job.task, tokenizer, job.lm.block_size)  # type: ignore[union-attr]
    info.update(vocab_size=len(tokenizer), model_type=config.model_type)
    timeline.mark("driver_tokenizer_model_checked", "driver")
    return job, info


def check_data_cpus_driver(job: JobConfig) -> None:
    """Ray Data's tasks need CPUs the training workers do not hold, or the stream never starts."""
    lm, res = job.lm, job.resources
    if lm is None or lm.pipeline != "ray-data" or not job.cluster.check_resources:
        return
    free = ray.cluster_resources().get("CPU", 0.0) - res.num_workers * res.cpus_per_worker
    if free < lm.tokenize_num_cpus:
        raise ResourceError(
            f"resources: Ray Data tokenize tasks need lm.tokenize_num_cpus={lm.tokenize_num_cpus:g} CPU beyond the "
            f"{res.num_workers} workers x resources.cpus_per_worker={res.cpus_per_worker:g}, the cluster has "
            f"{free:g} left (lower either, e.g. resources.cpus_per_worker=0.5, or add CPUs)"
        )


def build_pretrainer_driver(job: JobConfig, run_name: str, callbacks: list[Any] | None = None) -> Any:
    from hfray.torch_backend import torch_trainer_driver

    storage = job.storage.path
    loop_config = {
        "job": job.to_dict(),
        "run_name": run_name,
        "run_dir": checkpoints.join(storage, run_name),
        "local_root": _local_root(storage, run_name),
        "artifact_uri": checkpoints.artifact_uri(storage, run_name),
    }
    extra: dict[str, Any] = {}
    if job.lm.pipeline == "ray-data":  # type: ignore[union-attr]
        # The driver checked this tokenizer in preflight; loading it again is milliseconds.
        datasets, loop_config["validation_blocks"] = ray_data.build_datasets_driver(
            job, modeling.load_tokenizer(job.model)
        )
        # Only "train" is split across workers; each worker reads the whole (small) held-out set.
        extra = {"datasets": datasets, "dataset_config": ray.train.DataConfig(["train"])}
    return torch_trainer_driver(
        pretrain_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=_scaling_config(job),
        run_config=run_config_driver(job, run_name, callbacks),
        **extra,
    )


def run_pretraining_driver(job: JobConfig, fresh: bool = False) -> RunSummary:
    """Pre-train a masked-lm or causal-lm job end to end; a finished job returns its results."""
    return run_job_driver(
        job,
        fresh,
        preflight_lm_driver,
        lambda job, info: f"{job.task} {info['model_type']}, vocab {info['vocab_size']}, pipeline {job.lm.pipeline}",
        lambda job, info, run_name, callbacks: build_pretrainer_driver(job, run_name, callbacks),
        checks=check_data_cpus_driver,
    )
