"""TRL on Ray Train: tasks ``sft`` (``SFTTrainer``) and ``dpo`` (``DPOTrainer``) on hfray's spine.

TRL's trainers subclass the HF ``Trainer``, so everything of the spine applies unchanged: the driver
checks the job, data, tokenizer (and its chat template) and model config before Ray starts; each
worker builds the TRL trainer under DDP / ZeRO / FSDP (``training.strategy``) with hfray's Ray report
callback (a report at every evaluation, rank-aware checkpoints), resumes from Ray's latest checkpoint,
and all ranks export the artifact (full model or PEFT adapter) that ``hfray predict`` / ``hfray serve``
load as ``text-generation``.

- sft data: chat ``messages`` (rendered with the tokenizer's chat template), ``prompt``/``completion``
  (loss on the completion by default) or plain ``text``; ``trl.packing`` packs into ``data.max_length``.
- dpo data: ``prompt``/``chosen``/``rejected`` (strings or chat turns). With a PEFT adapter the reference
  model is the base with the adapter switched off (TRL's own mechanism); without one it is a frozen copy
  of the starting weights.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import time
from typing import Any

import ray.train

from hfray import adapters, checkpoints, export, modeling, tracking
from hfray.config import JobConfig
from hfray.errors import DataError, ModelError
from hfray.hf_args import build_kwargs, check_training_arguments_driver
from hfray.reporting import report_callback_per_worker
from hfray.train import (
    RunSummary,
    _local_root,
    _localize_best_per_worker,
    _resume_dir_per_worker,
    _scaling_config,
    resolve_sources_driver,
    run_config_driver,
    run_job_driver,
)
from hfray.trl_config import PIPELINE_TASK, TrlSection

# ----------------------------------------------------------------------------- data (driver and workers)


def _sft_columns(trl: TrlSection, fmt: str, text_column: str) -> dict[str, str]:
    """Job column -> the column TRL expects, for one sft data format."""
    if fmt == "messages":
        return {trl.messages_column: "messages"}
    if fmt == "prompt-completion":
        return {trl.prompt_column: "prompt", trl.completion_column: "completion"}
    return {text_column: "text"}


def trl_columns(job: JobConfig, present: list[str]) -> dict[str, str]:
    """The job's columns renamed to TRL's names; ``auto`` picks the first sft format whose columns exist."""
    trl = job.trl
    assert trl is not None
    if job.task == "dpo":
        return {trl.prompt_column: "prompt", trl.chosen_column: "chosen", trl.rejected_column: "rejected"}
    formats = ["messages", "prompt-completion", "text"] if trl.format == "auto" else [trl.format]
    for fmt in formats:
        mapping = _sft_columns(trl, fmt, job.data.text_column)
        if all(col in present for col in mapping):
            return mapping
    return _sft_columns(trl, formats[0], job.data.text_column)


def load_trl_splits(job: JobConfig) -> dict[str, Any]:
    """{'train', 'validation'} datasets with TRL's column names, subsampled as the job says."""
    from hfray.data import load_source

    cfg = job.data
    train = load_source(cfg.train, cfg, "data.train")
    if cfg.validation:
        held = load_source(cfg.validation, cfg, "data.validation")
    else:
        parts = train.train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed)
        train, held = parts["train"], parts["test"]
    splits = {"train": train, "validation": held}
    out = {}
    for name, ds in splits.items():
        field = f"data.{name}" if name == "train" or cfg.validation else "data.train"
        mapping = trl_columns(job, ds.column_names)
        missing = [col for col in mapping if col not in ds.column_names]
        if missing:
            raise DataError(
                f"{field}: columns {missing} not found (have {ds.column_names}); set the trl.*_column keys"
                + (" or trl.format" if job.task == "sft" else "")
            )
        ds = ds.select_columns(list(mapping)).rename_columns({k: v for k, v in mapping.items() if k != v})
        limit = cfg.max_train_samples if name == "train" else cfg.max_eval_samples
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        out[name] = ds
    return out


def _is_conversational(splits: dict[str, Any]) -> bool:
    from trl.data_utils import is_conversational

    return bool(len(splits["train"])) and is_conversational(splits["train"][0])


def load_chat_tokenizer(job: JobConfig) -> Any:
    """The job's tokenizer, with ``trl.chat_template`` (a Jinja file or a tokenizer dir) when given."""
    from transformers import AutoTokenizer

    tokenizer = modeling.load_tokenizer(job.model)
    source = job.trl.chat_template if job.trl else None
    if source:
        path = os.path.expanduser(source)
        if os.path.isfile(path):
            with open(path) as f:
                tokenizer.chat_template = f.read()
        elif os.path.isdir(path):
            tokenizer.chat_template = AutoTokenizer.from_pretrained(path).chat_template
        else:
            raise ModelError(f"trl.chat_template: {source} is neither a Jinja file nor a tokenizer dir")
    return tokenizer


# ----------------------------------------------------------------------------- per worker


def build_causal_lm_per_worker(job: JobConfig, tokenizer: Any) -> Any:
    """A causal LM: from ``model.architecture`` (random init) or pretrained weights (QLoRA: quantized)."""
    from transformers import AutoModelForCausalLM

    config = modeling.load_config(job.model, **modeling.lm_overrides(tokenizer, job.model.architecture or {}))
    if job.model.architecture is not None:
        return AutoModelForCausalLM.from_config(config)
    return AutoModelForCausalLM.from_pretrained(
        job.model.name_or_path,
        config=config,
        revision=job.model.revision,
        trust_remote_code=job.model.trust_remote_code,
        **adapters.quantized_load_kwargs(job),
    )


def trl_arguments(job: JobConfig, output_dir: str, use_gpu: bool) -> Any:
    """``SFTConfig`` / ``DPOConfig``: hfray's TrainingArguments plus the task's TRL settings."""
    from trl import DPOConfig, SFTConfig

    trl = job.trl
    assert trl is not None
    kwargs = build_kwargs(job, output_dir, use_gpu)
    # TRL turns bf16 on when neither flag is given; on CPU that is 10-20x slower. hfray decides.
    kwargs.setdefault("bf16", False)
    kwargs.setdefault("fp16", False)
    kwargs["max_length"] = job.data.max_length
    if job.task == "dpo":
        return DPOConfig(**kwargs, beta=trl.beta, loss_type=[trl.loss_type])
    return SFTConfig(
        **kwargs,
        packing=trl.packing,
        completion_only_loss=trl.completion_only_loss,
        assistant_only_loss=trl.assistant_only_loss,
    )


def _trainer_per_worker(job: JobConfig, model: Any, tokenizer: Any, args: Any, splits: dict[str, Any], cb: list) -> Any:
    from trl import DPOTrainer, SFTTrainer

    common = {
        "args": args,
        "train_dataset": splits["train"],
        "eval_dataset": splits["validation"],
        "processing_class": tokenizer,
        "callbacks": cb,
    }
    if job.task == "sft":
        return SFTTrainer(model=model, **common)
    from accelerate.utils import is_peft_model

    # Without an adapter TRL would reload the reference from the config's path (none for a model built
    # from a config): hand it a frozen copy of the starting weights instead.
    ref = None if is_peft_model(model) else copy.deepcopy(model).eval().requires_grad_(False)
    return DPOTrainer(model=model, ref_model=ref, **common)


def peak_memory_per_rank() -> list[float]:
    """Peak GPU memory (GiB) of every rank, gathered to all (an empty list on CPU)."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return []
    mine = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if not dist.is_initialized():
        return [mine]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [float(x) for x in gathered]


def _throughput(trainer: Any, resumed_step: int, seconds: float) -> dict[str, Any]:
    """Tokens trained in this attempt (TRL counts them across ranks, from 0 in each process) and tokens/s."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    tokens = float(counts[-1]) if counts else None
    return {
        "num_tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
        "steps_this_attempt": trainer.state.global_step - resumed_step,
        "train_seconds_this_attempt": round(seconds, 2),
    }


def trl_fn_per_worker(loop_config: dict[str, Any]) -> None:
    import torch
    from transformers import PrinterCallback, set_seed

    job = JobConfig.from_dict(loop_config["job"], source="job (on worker)")
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(job.resources.cpus_per_worker)))
    local_root = loop_config["local_root"]
    tokenizer = load_chat_tokenizer(job)
    splits = load_trl_splits(job)
    set_seed(job.training.seed)  # before the model exists: a model built from a config is randomly initialised
    model = build_causal_lm_per_worker(job, tokenizer)
    base_copy = os.path.join(local_root, "peft-base") if rank == 0 else None
    model, peft_info = adapters.apply_peft_per_worker(model, job, base_copy)
    args = trl_arguments(job, os.path.join(local_root, "hf"), use_gpu=job.resources.gpus_per_worker > 0)
    resume_dir, resumed_step = _resume_dir_per_worker(local_root, None, rank)
    if resume_dir and job.evaluation.load_best_model_at_end:
        _localize_best_per_worker(resume_dir, ctx.get_local_rank())
    callbacks = [report_callback_per_worker(job, resumed_step, local_root, rank)]
    callbacks += tracking.callbacks_per_worker(job, loop_config["run_name"])
    trainer = _trainer_per_worker(job, model, tokenizer, args, splits, callbacks)
    trainer.remove_callback(PrinterCallback)  # hfray's callback prints one concise line per log/eval
    started = time.time()
    trainer.train(resume_from_checkpoint=resume_dir)
    seconds = time.time() - started
    final = trainer.evaluate()
    state = trainer.state
    manifest = {
        "format": 1,
        "task": PIPELINE_TASK,  # what transformers.pipeline calls it: hfray predict/serve use this
        "training_task": job.task,
        "name": job.name,
        "run_name": loop_config["run_name"],
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "best": {"step": state.best_global_step, "metric": args.metric_for_best_model, "value": state.best_metric},
        "global_step": state.global_step,
        "resumed_from_step": resumed_step,
        "peft": peft_info,
        "throughput": _throughput(trainer, resumed_step, seconds),
        "peak_gpu_memory_gib_per_rank": peak_memory_per_rank(),
        "world_size": ctx.get_world_size(),
        "strategy": job.training.strategy,
        "generation": {"max_new_tokens": job.trl.generation_max_new_tokens},  # type: ignore[union-attr]
        "data": {"sizes": {k: len(v) for k, v in splits.items()}},
        "job": job.to_dict(),
        "versions": {**checkpoints.library_versions(), **_trl_version()},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    stage = os.path.join(local_root, "artifact")
    export.export_artifact_per_worker(trainer, tokenizer, loop_config["artifact_uri"], manifest, stage, rank, base_copy)


def _trl_version() -> dict[str, str]:
    from importlib.metadata import version

    return {"trl": version("trl")}


# ----------------------------------------------------------------------------- driver


def preflight_trl_driver(job: JobConfig) -> tuple[JobConfig, dict[str, Any]]:
    """Config, data columns, tokenizer + chat template and model config, before Ray starts."""
    check_training_arguments_driver(job)
    job = resolve_sources_driver(job)
    splits = load_trl_splits(job)
    tokenizer = load_chat_tokenizer(job)
    if _is_conversational(splits) and not tokenizer.chat_template:
        raise ModelError(
            f"trl.chat_template: the data is chat turns but the tokenizer {job.model.tokenizer_source} has no chat "
            "template; give a Jinja file or a tokenizer dir that has one"
        )
    config = modeling.load_config(job.model, **modeling.lm_overrides(tokenizer, job.model.architecture or {}))
    adapters.check_peft_driver(job, config.model_type)
    info = {
        "rows": {k: len(v) for k, v in splits.items()},
        "columns": splits["train"].column_names,
        "model_type": config.model_type,
        "chat": _is_conversational(splits),
    }
    return job, info


def build_trl_trainer_driver(job: JobConfig, run_name: str, callbacks: list[Any] | None = None) -> Any:
    from hfray.torch_backend import torch_trainer_driver

    storage = job.storage.path
    loop_config = {
        "job": job.to_dict(),
        "run_name": run_name,
        "local_root": _local_root(storage, run_name),
        "artifact_uri": checkpoints.artifact_uri(storage, run_name),
    }
    return torch_trainer_driver(
        trl_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=_scaling_config(job),
        run_config=run_config_driver(job, run_name, callbacks),
    )


def run_trl_driver(job: JobConfig, fresh: bool = False) -> RunSummary:
    """Train an sft or dpo job end to end; a finished job returns its results without training."""
    return run_job_driver(
        job,
        fresh,
        preflight_trl_driver,
        lambda job, info: f"{job.task} {info['model_type']}, rows {info['rows']}",
        lambda job, info, run_name, callbacks: build_trl_trainer_driver(job, run_name, callbacks),
    )
