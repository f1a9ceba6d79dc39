"""Text classification on each Ray Train worker: the HF ``Trainer`` on the job's data, then the artifact."""

from __future__ import annotations

import os
from typing import Any

from hfray import timeline
from hfray.cluster import start_gate
from hfray.config import JobConfig
from hfray.data import cache
from hfray.data import classification as data
from hfray.model import loading, peft
from hfray.train import worker
from hfray.train.recipes.classification import defaults


def weighted_loss(weights: list[float]) -> Any:
    """A ``compute_loss_func``: cross-entropy with class weights, summed and divided by the batch's label count."""
    import torch
    import torch.nn.functional as F

    def compute_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        w = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), weight=w, reduction="sum")
        # filling rows of a short batch (data.FullBatches) are ignored by cross-entropy and not counted
        return loss / (num_items_in_batch if num_items_in_batch is not None else (labels != data.IGNORED_LABEL).sum())

    return compute_loss


def shortest_first(dataset: Any) -> Any:
    """``dataset``'s rows by token count: a batch of an evaluation then pads to rows of about its own length (the
    collator pads each batch to its longest row; most of a random batch is padding). For the validation and test
    splits, whose metrics are per row: the order changes only which rows share a batch, so the metrics are the
    same up to float rounding (padding is masked) at about half the padded tokens (1,281 Rotten Tomatoes rows at
    max_length 64: 70.6k -> 37.0k, an evaluation 17.6 -> 9.3 s on one CPU thread). A sweep evaluates its
    validation split at every rung of every trial, so this is most of a trial's non-training time."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def artifact_fields(job: JobConfig) -> dict[str, Any]:
    return {"task": "text-classification"}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    timeline.mark_process_start()
    timeline.mark("worker_fn_start")
    from transformers import Trainer, set_seed

    from hfray.train.arguments import training_arguments  # the Trainer stack: imported where used
    from hfray.train.callbacks import throughput
    from hfray.train.recipes.classification.metrics import classification_metrics_fn

    timeline.mark("worker_imports")
    checked = start_gate.wait_at_gate(loop_config)  # on a running cluster the driver checks meanwhile
    if checked is None:
        return  # the driver's checks failed: it reports why
    timeline.mark("worker_gate_passed")
    run = worker.start(checked)
    worker.limit_threads(run)
    job, labels = run.job, checked["labels"]
    prepared = data.prepare(job.data)
    timeline.mark("worker_data")
    worker.check_fingerprint(prepared.fingerprint, checked["data_fingerprint"], run.rank)
    tokenizer = loading.load_tokenizer(job.model)
    timeline.mark("worker_tokenizer")
    set_seed(job.training.seed)  # before the model exists: a fresh head (or a whole model) is randomly initialised
    model = loading.build_classifier(job.model, labels, tokenizer, **peft.quantized_load_kwargs(job))
    model, peft_info = peft.apply_peft(model, job, run.base_copy)
    timeline.mark("worker_model")
    cached = job.data.cache_tokenized and cache.cache_root(job.storage.path) is not None
    with worker.rank_zero_first(run.rank, run.world_size, enabled=cached):  # the others read rank 0's entry
        encoded = data.tokenize_cached(prepared, tokenizer, job.data, labels, job.storage.path)
    timeline.mark("worker_tokenized")
    job = defaults.resolve_on_worker(run, len(encoded["train"]), len(labels))  # long GPU runs: CUDA graphs
    args = training_arguments(job, os.path.join(run.local_root, "hf"), use_gpu=run.use_gpu)
    attempt = worker.resume(run)
    mean_len = data.mean_token_length(encoded["train"])
    speed = throughput.callback_for_model(model, mean_len, round(mean_len))
    timeline.mark("worker_mean_length")
    weights = checked.get("class_weights")
    validation = shortest_first(encoded["validation"])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=defaults.padding_collator(job, tokenizer),
        compute_metrics=classification_metrics_fn(job.evaluation.metrics),
        compute_loss_func=weighted_loss(weights) if weights else None,
        callbacks=[*worker.callbacks(run, attempt, job), speed],
    )
    attempt = worker.train(trainer, attempt)
    defaults.remember_compiled(run, job, len(labels))  # its graphs are in the compile cache: re-runs compile too
    final = worker.final_eval_metrics(trainer, validation)
    if "test" in encoded:
        final.update(trainer.evaluate(shortest_first(encoded["test"]), metric_key_prefix="test"))
    worker.finish(
        *(run, attempt, trainer, tokenizer, final),
        **artifact_fields(job),
        labels=labels,
        peft=peft_info,  # method, trainable/all parameter counts; None without a peft section
        throughput=worker.throughput(run, attempt, trainer, speed),
        resolved=job,
        data={"fingerprint": prepared.fingerprint, "sizes": prepared.sizes},
    )
