"""A fine-tuning task (token classification, QA, seq2seq) on each Ray Train worker: the task's features, model,
collator and metrics in the task's Trainer class (``Trainer`` / ``Seq2SeqTrainer``), in the shared lifecycle."""

from __future__ import annotations

import os
from typing import Any

from hfray.config import JobConfig
from hfray.model import peft
from hfray.train import worker
from hfray.train.recipes.tasks.data import prepare_task_data
from hfray.train.recipes.tasks.registry import get_task


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


def artifact_fields(job: JobConfig) -> dict[str, Any]:
    """The task's pipeline (what hfray predict/serve load the model as) and its settings."""
    spec = get_task(job.task)
    return {"task": spec.pipeline_task(job), **spec.manifest_extras(job)}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    from transformers import set_seed

    from hfray.train.arguments import build_kwargs

    run = worker.start(loop_config)
    worker.limit_threads(run)
    job, labels = run.job, loop_config["labels"]
    spec = get_task(job.task)
    prepared = prepare_task_data(job, spec)
    worker.check_fingerprint(prepared.fingerprint, loop_config["data_fingerprint"], run.rank)
    tokenizer = spec.load_processor(job)  # images: the image processor
    set_seed(job.training.seed)  # before the model exists: a fresh head (or a whole model) is randomly initialised
    model = spec.build_model(job, tokenizer, labels)
    encoded = spec.encode(prepared.splits, tokenizer, job, labels)
    model, peft_info = peft.apply_peft(model, job, run.base_copy)  # no-op without a peft section
    args = spec.training_args(build_kwargs(job, os.path.join(run.local_root, "hf"), run.use_gpu), job)
    attempt = worker.resume(run)
    trainer = split_metrics_trainer(spec.trainer_class())(
        model=model,
        args=args,
        train_dataset=encoded.train,
        eval_dataset=encoded.evals["validation"],
        processing_class=tokenizer,
        data_collator=spec.collator(tokenizer, model, job),
        metrics_by_prefix=encoded.metrics,
        callbacks=worker.callbacks(run, attempt),
    )
    attempt = worker.train(trainer, attempt)
    final = worker.final_eval_metrics(trainer, encoded.evals["validation"])
    if "test" in encoded.evals:
        final.update(trainer.evaluate(encoded.evals["test"], metric_key_prefix="test"))
    spec.prepare_export(trainer.accelerator.unwrap_model(trainer.model), job)
    worker.finish(
        *(run, attempt, trainer, tokenizer, final),
        **artifact_fields(job),
        labels=labels,
        peft=peft_info,
        throughput=worker.throughput(run, attempt, trainer),
        data={"fingerprint": prepared.fingerprint, "sizes": prepared.sizes},
    )
