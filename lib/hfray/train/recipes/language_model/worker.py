"""Pre-training on each Ray Train worker: a masked or causal LM from ``model.architecture``, trained on packed blocks.

Data: this worker's shard of the Ray Data stream (``lm.pipeline: ray-data``, started before the heavy imports so
Ray Data's tasks boot meanwhile), or every worker packing the whole corpus in memory (``datasets``). Evaluation:
held-out loss and perplexity on blocks masked once with a fixed seed.
"""

from __future__ import annotations

import os
from typing import Any

from hfray import timeline
from hfray.config import JobConfig
from hfray.data import lm as lm_data
from hfray.data.stream import worker as stream_worker
from hfray.model import language_model, loading
from hfray.train import worker
from hfray.train.arguments import CUDA_GRAPHS_MODE
from hfray.train.recipes.language_model import defaults

PIPELINE_TASKS = {"masked-lm": "fill-mask", "causal-lm": "text-generation"}


def training_args(job: JobConfig, output_dir: str, encoder_compiled: bool = False) -> Any:
    """``encoder_compiled``: the recipe compiled the encoder itself (:func:`compile_encoder`), HF compiles nothing."""
    from transformers import TrainingArguments

    from hfray.train.arguments import build_kwargs

    kwargs = build_kwargs(job, output_dir, use_gpu=job.resources.gpus_per_worker > 0)
    if encoder_compiled:  # a compile mode would turn the Trainer's torch_compile back on
        kwargs["torch_compile"] = False
        kwargs.pop("torch_compile_mode", None)
    if job.lm.pipeline == "ray-data":  # type: ignore[union-attr]
        # A resumed stream starts afresh (Ray Data's order is not replayable), so skipping the
        # batches trained before the failure would only throw data away.
        kwargs["ignore_data_skip"] = True
    return TrainingArguments(**kwargs)


def compile_encoder(encoder: Any, regions: bool, graphs: bool, backend: str = "inductor") -> None:
    """A masked LM's encoder compiled in place (the same parameters and state-dict keys; static block shapes): whole,
    one graph (measured: ``defaults.default_compile``), or with ``training.compile_regions: true`` each of its
    layers, so that Dynamo traces each kind of layer once (ModernBERT: its first, its global and its local layers)
    and the cold compile does not grow with depth. 2 CPUs, a ModernBERT of 22 layers (hidden 128), Inductor, cold
    cache (``bench/compile_encoder_cpu.py``, two runs): first step 50.3-56.1 s whole against 18.9-33.6 s by layer, the
    same losses; steady on a GPU not measured yet.
    ``backend``: tests trace with aot_eager."""
    mode = CUDA_GRAPHS_MODE if graphs else None
    for module in (repeated_layers(encoder) if regions else None) or [encoder]:
        module.compile(backend=backend, mode=mode)


def repeated_layers(module: Any) -> Any:
    """The first of ``module``'s repeated blocks (accelerate's test for regional compilation: a ``ModuleList`` of one
    class) with more than one module: an encoder's layers; None if it has none."""
    from accelerate.utils.other import is_repeated_blocks

    return next((child for child in module.modules() if is_repeated_blocks(child) and len(child) > 1), None)


def in_memory_sets(job: JobConfig, tokenizer: Any) -> tuple[Any, Any]:
    """``lm.pipeline: datasets``: every worker packs the whole corpus; HF's sampler shards it per rank."""
    from hfray.data.sources import load_source

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


def train_and_eval_sets(
    job: JobConfig, tokenizer: Any, collator: Any, held_out: Any = None, stream: Any = None
) -> tuple[Any, Any]:
    """(train dataset, fixed held-out set). ``stream``: this worker's started Ray Data shard (pipeline ray-data),
    returned as a torch IterableDataset once it can collate; ``held_out``: blocks the driver packed."""
    import numpy as np

    lm = job.lm
    assert lm is not None
    if stream is not None:
        stream.set_collate(lambda blocks: lm_data.collate_blocks(blocks, collator, tokenizer))
        train = stream_worker.torch_stream(stream)
        held = held_out if held_out is not None else stream_worker.validation_blocks()
    else:
        train, held = in_memory_sets(job, tokenizer)
    evaluation = lm_data.fixed_eval_set(
        np.asarray(held), tokenizer, job.task, lm.mlm_probability, job.training.seed, lm.masking
    )
    return train, evaluation


def artifact_fields(job: JobConfig) -> dict[str, Any]:
    """What transformers.pipeline calls the model: hfray predict/serve use this."""
    return {"task": PIPELINE_TASKS[job.task]}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    timeline.mark_process_start()
    timeline.mark("worker_fn_start")
    run = worker.start(loop_config)
    job = run.job  # its speed defaults are resolved once the model exists (defaults.default_compile)
    lm, t = job.lm, job.training
    assert lm is not None
    # Before the heavy imports: Ray Data's tasks start while this worker imports torch and builds the model.
    stream = None
    if lm.pipeline == "ray-data":
        stream = stream_worker.start_shard_stream(
            t.per_device_train_batch_size,
            lm.local_shuffle_buffer_size,
            t.seed + run.rank,
            lm.record_shards,
            lm.prefetch_batches,
        )
    from transformers import set_seed

    from hfray.train.callbacks import throughput  # transformers' Trainer stack (torch, peft): workers only
    from hfray.train.recipes.language_model.trainer import LanguageModelTrainer

    timeline.mark("worker_imports")
    worker.limit_threads(run)
    tokenizer = loading.load_tokenizer(job.model)
    timeline.mark("worker_tokenizer")
    set_seed(t.seed)  # before the model exists: it is randomly initialised
    model = language_model.build_language_model(job.model, job.task, tokenizer, lm.block_size)
    timeline.mark("worker_model")
    job = worker.adopt(run, defaults.default_compile(run.job, run.use_gpu, model.config.model_type))
    t = job.training
    masked = job.task == "masked-lm"
    # An MLM loss needs the head at masked positions only: MFU counts those FLOPs whichever head runs.
    speed = throughput.callback_for_model(model, lm.block_size, lm.block_size, lm.mlm_probability if masked else 1.0)
    # A compiled encoder gets an all-ones attention mask where the blocks carry none: traced without one, sdpa gets
    # a broadcast mask no fused kernel takes (72.0 against 61.4 ms a BERT-base step, bench/mlm_attention_probe.py).
    full_mask = bool(t.torch_compile)
    masked_only = masked and lm.mlm_loss_on_masked_only and language_model.mlm_loss_on_masked_only(model, full_mask)
    if masked and lm.mlm_loss_on_masked_only and not masked_only and run.rank == 0:
        print(f"[hfray] lm.mlm_loss_on_masked_only: not supported for {model.config.model_type}; full head")
    encoder_compiled = t.torch_compile and masked_only
    if encoder_compiled:  # the head's rows are the masked positions (a data-dependent count): it stays eager
        compile_encoder(model.base_model, regions=t.compile_regions is True, graphs=bool(t.cuda_graphs))
    # Seeded per rank: each worker masks its own blocks differently, reproducibly.
    collator = lm_data.make_lm_collator(tokenizer, job.task, lm.mlm_probability, t.seed + run.rank, lm.masking)
    train, evaluation = train_and_eval_sets(job, tokenizer, collator, loop_config.get("validation_blocks"), stream)
    timeline.mark("worker_data")
    attempt = worker.resume(run)
    trainer = LanguageModelTrainer(
        model=model,
        args=training_args(job, os.path.join(run.local_root, "hf"), encoder_compiled),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=lm_data.BlockCollator(collator, tokenizer),
        callbacks=[*worker.callbacks(run, attempt, job), speed],
        train_stream=train if stream is not None else None,
    )
    attempt = worker.train(trainer, attempt)
    final = worker.final_eval_metrics(trainer, evaluation)
    if stream is not None:
        stream_worker.write_shard_record(stream, loop_config["run_dir"], run.rank)
    trained = trainer.state.global_step - attempt.resumed_step
    tokens = trained * t.per_device_train_batch_size * t.gradient_accumulation_steps * run.world_size * lm.block_size
    worker.finish(
        *(run, attempt, trainer, tokenizer, final),
        **artifact_fields(job),
        throughput=worker.throughput(run, attempt, trainer, speed, tokens),
        resolved=job,
        data={"pipeline": lm.pipeline, "block_size": lm.block_size, "eval_blocks": len(evaluation)},
    )
