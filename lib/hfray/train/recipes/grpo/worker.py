"""grpo on each Ray Train worker: TRL's ``GRPOTrainer`` (a subclass of the HF ``Trainer``) in the lifecycle.

Every step samples ``trl.num_generations`` completions per prompt, scores them with the job's rewards (summed
with their weights) and moves the policy towards the completions that beat their group's mean. Every evaluation
reports the mean reward (``eval_reward``, the metric that picks the best checkpoint), its spread, each reward's
mean, the completion lengths and, with ``trl.beta > 0``, the KL to the reference model.
"""

from __future__ import annotations

import os
from typing import Any

from hfray.artifacts.manifest import library_versions
from hfray.config import JobConfig
from hfray.model import peft
from hfray.model.causal_lm import build_causal_lm, load_chat_tokenizer
from hfray.train import worker
from hfray.train.recipes.grpo.data import load_grpo_splits
from hfray.train.recipes.grpo.rewards import build_rewards


def grpo_arguments(job: JobConfig, output_dir: str, use_gpu: bool, weights: list[float]) -> Any:
    """``GRPOConfig``: hfray's TrainingArguments plus the job's generation settings, KL coefficient, weights."""
    from trl import GRPOConfig

    from hfray.train.arguments import build_kwargs

    trl = job.trl
    assert trl is not None
    kwargs = build_kwargs(job, output_dir, use_gpu)
    # TRL turns bf16 on when neither flag is given; hfray decides (training.precision: auto keeps TRL's tasks fp32
    # on CPU, hfray.train.arguments.CPU_BF16_EXCLUDED_TASKS)
    kwargs.setdefault("bf16", False)
    kwargs.setdefault("fp16", False)
    return GRPOConfig(
        **kwargs,
        num_generations=trl.num_generations,
        max_completion_length=trl.max_completion_length,
        temperature=trl.temperature,
        beta=trl.beta,
        reward_weights=weights,
    )


def reference_path(run: worker.WorkerRun, model: Any) -> None:
    """TRL reloads the KL reference from the model's path; a model built from a config has none: save its
    starting weights on this node and point the config there (a PEFT model's reference is its adapter-less base)."""
    from accelerate.utils import is_peft_model

    job = run.job
    assert job.trl is not None
    if job.trl.beta > 0 and job.model.architecture is not None and not is_peft_model(model):
        from safetensors.torch import save_model

        # Not save_pretrained: under torch.distributed it writes on rank 0 only, and every rank loads its own.
        path = os.path.join(run.local_root, f"grpo-reference-{run.rank}")
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(path)
        save_model(model, os.path.join(path, "model.safetensors"))
        model.config._name_or_path = path


artifact_fields = worker.trl_artifact_fields  # the recipe's: a text-generation artifact


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    from transformers import set_seed
    from trl import GRPOTrainer

    run = worker.start(loop_config)
    worker.limit_threads(run)
    job = run.job
    tokenizer = load_chat_tokenizer(job)
    splits = load_grpo_splits(job)
    set_seed(job.training.seed)  # before the model exists: a model built from a config is randomly initialised
    model = build_causal_lm(job, tokenizer)
    model, peft_info = peft.apply_peft(model, job, run.base_copy)
    reference_path(run, model)
    rewards, weights = build_rewards(job, device=run.local_rank if run.use_gpu else None)
    args = grpo_arguments(job, os.path.join(run.local_root, "hf"), run.use_gpu, weights)
    attempt = worker.resume(run)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        callbacks=worker.callbacks(run, attempt),
    )
    attempt = worker.train(trainer, attempt)
    final = worker.final_eval_metrics(trainer, splits["validation"])
    worker.finish(
        *(run, attempt, trainer, tokenizer, final),
        **artifact_fields(job),
        peft=peft_info,
        throughput=worker.throughput(run, attempt, trainer, tokens=worker.trl_tokens_trained(trainer)),
        data={"sizes": {k: len(v) for k, v in splits.items()}},
        versions=library_versions(["trl"]),
    )
