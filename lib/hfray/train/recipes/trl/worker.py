"""TRL (sft, dpo) on each Ray Train worker: TRL's trainer, which subclasses the HF ``Trainer``, in the lifecycle.

- sft data: chat ``messages`` (rendered with the tokenizer's chat template), ``prompt``/``completion``
  (loss on the completion by default) or plain ``text``; ``trl.packing`` packs into ``data.max_length``.
- dpo data: ``prompt``/``chosen``/``rejected`` (strings or chat turns). With a LoRA/QLoRA adapter the reference
  is the base with adapters disabled (:func:`drop_identity_reference`); with another adapter TRL's frozen copy of
  it (``ref``); without one a frozen copy of the starting weights. The steady-state throughput counts pairs
  (``hfray.train.callbacks.throughput.count_dpo_pairs``).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from hfray.artifacts.manifest import library_versions
from hfray.config import JobConfig
from hfray.model import peft
from hfray.model.causal_lm import build_causal_lm
from hfray.train import worker
from hfray.train.recipes.trl import deferred, deferred_preference, flat, preference, rows
from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits


def trl_arguments(job: JobConfig, output_dir: str, use_gpu: bool) -> Any:
    """``SFTConfig`` / ``DPOConfig``: hfray's TrainingArguments plus the task's TRL settings."""
    from trl import DPOConfig, SFTConfig

    trl = job.trl
    assert trl is not None
    from hfray.train.arguments import build_kwargs

    kwargs = build_kwargs(job, output_dir, use_gpu)
    # TRL turns bf16 on when neither flag is given; hfray decides (training.precision: auto keeps TRL's tasks fp32
    # on CPU, hfray.train.arguments.CPU_BF16_EXCLUDED_TASKS)
    kwargs.setdefault("bf16", False)
    kwargs.setdefault("fp16", False)
    kwargs["max_length"] = job.data.max_length
    if job.task == "dpo":
        return DPOConfig(**kwargs, **preference.padding(job), beta=trl.beta, loss_type=[trl.loss_type])
    return SFTConfig(
        **kwargs,
        packing=trl.packing,
        completion_only_loss=trl.completion_only_loss,
        assistant_only_loss=trl.assistant_only_loss,
    )


def build_trainer(job: JobConfig, model: Any, tokenizer: Any, args: Any, splits: dict[str, Any], cb: list) -> Any:
    from trl import DPOTrainer, SFTTrainer

    common = {
        "args": args,
        "train_dataset": splits["train"],
        "eval_dataset": splits["validation"],
        "processing_class": tokenizer,
        "callbacks": cb,
    }
    if job.task == "sft":
        trainer = SFTTrainer(model=model, **common)
        compiled = job.training.torch_compile
        if rows.keeps_rows(trainer, job.trl.packed_layout, model.config._attn_implementation):  # packed: rows
            rows.keep_rows(trainer, job.data.max_length if compiled else None)
        elif compiled and getattr(trainer, "padding_free", False):  # packed, TRL's flat row: one length
            flat.fix_flat_row(trainer, args.per_device_train_batch_size, job.data.max_length)
        if job.trl.deferred_metrics:  # no host sync inside a step
            deferred.defer_metrics(trainer, packed=job.trl.packing)
        return trainer
    from accelerate.utils import is_peft_model

    # Without an adapter TRL would reload the reference from the config's path (none for a model built
    # from a config): hand it a frozen copy of the starting weights instead.
    ref = None if is_peft_model(model) else copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(model=model, ref_model=ref, **common)
    drop_identity_reference(trainer.model, job)
    if job.trl.deferred_metrics:  # no host sync per metric inside a step
        deferred_preference.defer_metrics(trainer)
    return trainer


def drop_identity_reference(model: Any, job: JobConfig) -> None:
    """TRL 1.16, handed a PEFT model, adds ``ref``: a frozen copy of the adapter, for the reference pass. hfray's
    LoRA/QLoRA adapter is always fresh, and a fresh LoRA is the identity (B = 0), so that reference is the base
    with adapters disabled, which TRL uses when no ``ref`` exists: the reference pass skips the adapter's matmuls,
    and checkpoints and the artifact hold one adapter, not two. Other methods (prompt/prefix tuning) are not the
    identity when fresh: they keep TRL's copy."""
    if job.peft is not None and job.peft.method in ("lora", "qlora") and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


artifact_fields = worker.trl_artifact_fields  # the recipe's: a text-generation artifact


def steady_throughput(job: JobConfig, model: Any) -> Any:
    """Packed SFT: the steady-state callback (rows of data.max_length tokens: an upper bound, BFD packing leaves
    some rows short); DPO: the callback, its counts set from the tokenized pairs (``count_dpo_pairs``); None
    otherwise (the manifest keeps TRL's own token count)."""
    from hfray.train.callbacks.throughput import ThroughputCallback, callback_for_model

    if job.task == "dpo":
        return ThroughputCallback(0.0, memoize_parameters=True)
    if job.task != "sft" or not job.trl or not job.trl.packing:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return callback_for_model(base, job.data.max_length, job.data.max_length)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    from transformers import set_seed

    run = worker.start(loop_config)
    worker.limit_threads(run)
    job = flat.default_compile(rows.default_attention(run.job, run.use_gpu))
    job = preference.default_compile(job, run.use_gpu)
    job = worker.adopt(run, job)
    assert job.trl is not None
    tokenizer = load_chat_tokenizer(job)
    splits = load_trl_splits(job)
    set_seed(job.training.seed)  # before the model exists: a model built from a config is randomly initialised
    model = build_causal_lm(job, tokenizer)
    model, peft_info = peft.apply_peft(model, job, run.base_copy)
    args = trl_arguments(job, os.path.join(run.local_root, "hf"), use_gpu=run.use_gpu)
    attempt = worker.resume(run)
    speed = steady_throughput(job, model)
    callbacks = worker.callbacks(run, attempt, job) + ([speed] if speed else [])
    trainer = build_trainer(job, model, tokenizer, args, splits, callbacks)
    if job.task == "dpo":
        from hfray.train.callbacks.throughput import count_dpo_pairs

        count_dpo_pairs(speed, trainer.train_dataset, model, job.data.max_length)
    attempt = worker.train(trainer, attempt)
    final = worker.final_eval_metrics(trainer, splits["validation"])
    worker.finish(
        *(run, attempt, trainer, tokenizer, final),
        **artifact_fields(job),
        peft=peft_info,
        throughput=worker.throughput(run, attempt, trainer, speed, tokens=worker.trl_tokens_trained(trainer)),
        data={"sizes": {k: len(v) for k, v in splits.items()}},
        versions=library_versions(["trl"]),
        resolved=job,
    )
