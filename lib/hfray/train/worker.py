"""The run lifecycle on each Ray Train worker: the steps every recipe's ``train_loop_per_worker`` shares.

A recipe's worker function reads like this (``hfray.train.recipes.*.worker``)::

    run = worker.start(loop_config)                   # the job, this rank
    worker.limit_threads(run)                         # torch threads = the worker's CPUs
    ... data, tokenizer, model, TrainingArguments ... # the recipe's own
    attempt = worker.resume(run)                      # Ray's latest checkpoint, or a PBT donor's
    trainer = ...(callbacks=worker.callbacks(run, attempt))
    attempt = worker.train(trainer, attempt)
    final = worker.final_eval_metrics(trainer, validation)
    worker.finish(run, attempt, trainer, tokenizer, final, **artifact_fields(run.job), data=..., ...)

Import-light at the top (the driver imports the recipes' worker modules to hand their functions to Ray):
torch and transformers are imported inside the steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray.train

from hfray import timeline
from hfray.artifacts.export import export_artifact
from hfray.artifacts.manifest import build_manifest
from hfray.config import JobConfig
from hfray.errors import HfrayError
from hfray.train import process, session
from hfray.train.arguments import cudnn_attention, replays_cuda_graphs


@dataclass(frozen=True)
class WorkerRun:
    """This worker's view of the run: the re-validated job, the loop config, its rank and local folders."""

    job: JobConfig
    loop_config: dict[str, Any]
    rank: int
    local_rank: int
    world_size: int

    @property
    def local_root(self) -> str:
        """A node-local folder of this run (HF's output_dir, checkpoint stages, the artifact stage)."""
        return self.loop_config["local_root"]

    @property
    def base_copy(self) -> str | None:
        """Where rank 0 keeps the untouched base of a PEFT model built from a config (its random weights)."""
        return os.path.join(self.local_root, "peft-base") if self.rank == 0 else None

    @property
    def use_gpu(self) -> bool:
        return self.job.resources.gpus_per_worker > 0


def start(loop_config: dict[str, Any]) -> WorkerRun:
    """The job as the driver checked it (re-validated here) and this worker's rank; imports nothing heavy, so a
    recipe can start its data stream before it imports torch."""
    job = JobConfig.from_dict(loop_config["job"], source="job (on worker)")
    ctx = session.get_context()
    return WorkerRun(job, loop_config, ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size())


def limit_threads(run: WorkerRun) -> None:
    """torch's intra-op threads = the CPUs Ray reserved for this worker (torch's default takes every core), and the
    job file's compile settings (:func:`hfray.train.process.compile_settings`)."""
    import torch

    torch.set_num_threads(max(1, int(run.job.resources.cpus_per_worker)))
    process.compile_settings(run.job)


def adopt(run: WorkerRun, job: JobConfig) -> JobConfig:
    """``job``, the recipe's resolution of ``run.job`` (its speed defaults), with this process set for it: the compile
    settings again where the resolution changed them (:func:`limit_threads` set the job file's)."""
    if job != run.job:
        process.compile_settings(job)
    return job


@contextlib.contextmanager
def rank_zero_first(rank: int, world_size: int, enabled: bool = True) -> Iterator[None]:
    """Rank 0 runs the body before the other ranks do (HF's ``main_process_first``, without its 30-minute timeout):
    what it caches, the tokenized data, they then read instead of computing it again on the same cores (issue 19).
    A no-op for one worker, without a process group, or when ``enabled`` is False (nothing is cached)."""
    import torch.distributed as dist

    if not (enabled and world_size > 1 and dist.is_initialized()):
        yield
        return
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))  # tokenizing may take hours
    try:
        if rank != 0:
            dist.barrier(group=group)
        yield
    finally:
        if rank == 0:  # also when rank 0 failed: the others go on (and find no entry), Ray ends the group
            dist.barrier(group=group)
        dist.destroy_process_group(group)


def check_fingerprint(fingerprint: str, expected: str, rank: int) -> None:
    """The data this worker loaded is the data the driver checked, or a loud failure."""
    if fingerprint != expected:
        raise HfrayError(
            f"data on worker rank {rank} differs from what the driver checked (fingerprint "
            f"{fingerprint} != {expected}): every node must see the same files"
        )


# ----------------------------------------------------------------------------- resume


def _foreign_checkpoint(checkpoint: ray.train.Checkpoint, local: str) -> str:
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


def resume_dir(run: WorkerRun) -> tuple[str | None, int]:
    """The HF checkpoint folder to resume from, and its step (0 when fresh).

    The run's own latest Ray checkpoint wins; without one, the loop config's ``init_checkpoint`` (another run's
    checkpoint, e.g. the one a PBT exploit hands over) is the starting point.
    """
    import pyarrow.fs

    ckpt, init = session.get_checkpoint(), run.loop_config.get("init_checkpoint")
    if ckpt is not None and isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        path, source = ckpt.path, ckpt.path  # read in place: HF only reads a checkpoint it resumes from
    elif ckpt is not None:
        path, source = ckpt.to_directory(os.path.join(run.local_root, "resume")), ckpt.path
    elif init:
        path, source = _foreign_checkpoint(init, os.path.join(run.local_root, f"init-rank{run.rank}")), init.path
    else:
        return None, 0
    with open(os.path.join(path, "trainer_state.json")) as f:
        step = int(json.load(f)["global_step"])
    print(f"[hfray] resuming from checkpoint {source} at step {step}", flush=True)
    return path, step


def localize_best(resume_from: str, local_rank: int) -> None:
    """HF keeps the best checkpoint as a local path; after a restart on another node it is gone.

    Fetch it back from Ray storage (retention keeps the best by the same metric), so
    ``load_best_model_at_end`` still loads the true best model.
    """
    import torch.distributed as dist

    with open(os.path.join(resume_from, "trainer_state.json")) as f:
        best = json.load(f).get("best_model_checkpoint")
    if local_rank == 0 and best and not os.path.isdir(best):
        step = int(best.rsplit("-", 1)[-1])
        for reported in session.get_all_reported_checkpoints():
            if int(reported.metrics.get("step", -1)) == step:
                reported.checkpoint.to_directory(best)
                break
    if dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Attempt:
    """One attempt of the run (Ray restarts the worker group after a failure): where it resumed, how long it ran."""

    resume_from: str | None  # the HF checkpoint folder ``Trainer.train`` resumes from; None when fresh
    resumed_step: int
    seconds: float = 0.0  # wall time of ``Trainer.train``, once it returned


def resume(run: WorkerRun) -> Attempt:
    """:func:`resume_dir`, with HF's best checkpoint fetched back where the job loads it at the end."""
    found, step = resume_dir(run)
    if found and run.job.evaluation.load_best_model_at_end:
        localize_best(found, run.local_rank)
    return Attempt(found, step)


# ----------------------------------------------------------------------------- the Trainer


def callbacks(run: WorkerRun, attempt: Attempt, job: JobConfig | None = None) -> list[Any]:
    """The HF Trainer callbacks of every recipe: Ray reports (the driver draws progress from them), the job's
    learning rate over a resumed checkpoint's, early stopping. ``job``: the recipe's resolved job (its per-run
    defaults set), else the job file's."""
    from transformers import EarlyStoppingCallback

    from hfray.train.callbacks import cudagraphs, step_profile, torch_profile
    from hfray.train.callbacks.hyperparams import JobHyperparamsCallback
    from hfray.train.callbacks.report import RayReportCallback

    job = job or run.job
    stage = os.path.join(run.local_root, f"stage-{run.rank}")
    upload = {"async_upload": job.storage.async_upload, "retry_s": job.storage.retry_s}
    found: list[Any] = [RayReportCallback(attempt.resumed_step, stage, **upload)]
    if attempt.resume_from:
        found.append(JobHyperparamsCallback())  # a PBT exploit's new learning rate wins over the donor's
    if step_profile.enabled():
        found.append(step_profile.StepProfileCallback())
    if (profile_dir := torch_profile.target()) is not None:
        found.append(torch_profile.TorchProfileCallback(profile_dir))
    if run.loop_config.get("in_process"):  # the caller may end the run early (a sweep's scheduler)
        from hfray.train.local import stop_callback

        found.append(stop_callback())
    t = job.training
    if cudagraphs.wanted(t.extra_args, t.torch_compile, t.cuda_graphs):
        found.append(cudagraphs.CudaGraphStepCallback())
    if t.early_stopping_patience:
        found.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    return found


def train(trainer: Any, attempt: Attempt) -> Attempt:
    """``trainer.train`` (resumed where Ray left off) with hfray's log lines instead of HF's; timed."""
    from transformers import PrinterCallback

    from hfray.train.callbacks.budget import StepBudgetCallback, StepBudgetReached, finish_without_steps

    trainer.remove_callback(PrinterCallback)  # hfray's report callback prints one concise line per log/eval
    trainer.add_callback(StepBudgetCallback())  # last: every other callback has begun when it ends train
    timeline.mark("worker_trainer_built")
    started = time.time()
    try:
        with process.frozen_setup():  # no full garbage collection over the setup's objects mid-step
            trainer.train(resume_from_checkpoint=attempt.resume_from)
    except StepBudgetReached:  # resumed from the checkpoint at max_steps
        finish_without_steps(trainer)
    return dataclasses.replace(attempt, seconds=time.time() - started)


def final_eval_metrics(trainer: Any, validation: Any) -> dict[str, Any]:
    """Validation metrics of the model being exported, from the log history when it has them.

    With load_best_model_at_end the exported weights are the best checkpoint's, whose evaluation is already in the
    log history; without it they are the last step's, which HF evaluates at the end of a step-evaluated run (and
    an epoch-evaluated one at its last step): either is reused instead of one more pass over the validation set
    (a sweep's refit, ``load_best_model_at_end: false``, paid it twice).
    """
    state = trainer.state
    loaded_best = trainer.args.load_best_model_at_end and state.best_global_step
    step = state.best_global_step if loaded_best else state.global_step
    for entry in state.log_history:
        if entry.get("step") == step and "eval_loss" in entry:
            return dict(entry)
    return trainer.evaluate(validation, metric_key_prefix="eval")


# ----------------------------------------------------------------------------- the artifact


def throughput(
    run: WorkerRun, attempt: Attempt, trainer: Any, speed: Any = None, tokens: float | None = None
) -> dict[str, Any]:
    """The manifest's ``throughput``: steady state (``speed``, a ThroughputCallback) and this attempt's counts.

    Peak memory per rank is the one ``speed`` gathered at the end of training; without it, it is gathered here, a
    collective under DDP: every rank calls this.
    """
    from hfray.train.callbacks.throughput import manifest_entry, peak_memory_per_rank

    peaks = speed.summary["peak_memory_bytes_per_rank"] if speed is not None else peak_memory_per_rank()
    return {
        "steady_state": manifest_entry(speed) if speed is not None else None,
        "steps_this_attempt": trainer.state.global_step - attempt.resumed_step,
        "tokens_this_attempt": tokens,
        "tokens_per_second": round(tokens / attempt.seconds, 1) if tokens and attempt.seconds > 0 else None,
        "world_size": run.world_size,
        "peak_gpu_memory_gib_per_rank": [round(p / 2**30, 3) for p in peaks],
    }


def trl_artifact_fields(job: JobConfig) -> dict[str, Any]:
    """The TRL recipes' (SFT, DPO, GRPO) ``artifact_fields``: a ``text-generation`` model, generating up to
    ``trl.generation_max_new_tokens`` by default."""
    assert job.trl is not None
    return {"task": "text-generation", "generation": {"max_new_tokens": job.trl.generation_max_new_tokens}}


def trl_tokens_trained(trainer: Any) -> float | None:
    """Tokens trained in this attempt as a TRL trainer counts them (its ``num_tokens``): across ranks, from 0 in each
    process; prompts and completions under GRPO."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    return float(counts[-1]) if counts else None


def manifest(
    run: WorkerRun,
    attempt: Attempt,
    trainer: Any,
    final: dict[str, Any],
    *,
    task: str,
    resolved: JobConfig | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The artifact's manifest (:mod:`hfray.artifacts.manifest`): the Trainer's state plus the recipe's ``fields``
    (``task``: the ``transformers.pipeline`` name, from the recipe's ``artifact_fields``). ``job``: as submitted;
    ``model``: the speed settings the worker ran (``resolved``: the job with the recipe's defaults, where it has)."""
    state = trainer.state
    model = trainer.accelerator.unwrap_model(trainer.model)
    return build_manifest(
        task=task,
        job=run.job.to_dict(),
        run_name=run.loop_config["run_name"],
        metrics=final,
        best={"step": state.best_global_step, "metric": trainer.args.metric_for_best_model, "value": state.best_metric},
        global_step=state.global_step,
        resumed_from_step=attempt.resumed_step,
        train_seconds_this_attempt=round(attempt.seconds, 2),
        model=model_record(model, trainer.args, resolved or run.job),
        timeline=timeline.phases(run.loop_config.get("timeline", []) + timeline.run_marks()),
        **fields,
    )


def model_record(model: Any, args: Any, job: JobConfig) -> dict[str, Any]:
    """The manifest's ``model``: parameters (ZeRO-3 shards count whole: ``ds_numel``), the attention kernel and the
    speed defaults the run resolved (packed SFT on GPUs picks varlen and LoRA SFT no Liger without the job saying).
    ``torch_compile``: the Trainer's flag (packed SFT on varlen turns it on by default) or the job's (masked-LM
    compiles its encoder itself, with the Trainer's flag off); ``cuda_graphs``: compiled, and the job's key or the
    Trainer's compile mode says so (packed LoRA SFT's default sets the mode); ``compile_regions``: compiled layer by
    layer (by the Trainer unless the job says false, text-classification's default; masked-LM's encoder only where
    the job says true)."""
    by_trainer = bool(getattr(args, "torch_compile", False))
    compiled = bool(job.training.torch_compile or by_trainer)
    regions = job.training.compile_regions
    mode = getattr(args, "torch_compile_mode", None)  # the Trainer's: packed LoRA SFT's default sets it
    return {
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        "attention": getattr(model.config, "_attn_implementation", None),
        "liger_kernel": bool(getattr(args, "use_liger_kernel", False)),
        "torch_compile": compiled,
        "cuda_graphs": replays_cuda_graphs(compiled, job.training.cuda_graphs, mode),
        # each repeated layer a region; else one graph (masked-LM's encoder, compiled by its recipe: whole by default)
        "compile_regions": (regions is not False) if by_trainer else (compiled and regions is True),
        "cudnn_attention": cudnn_attention(job),
        "precision": "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32",
    }


def finish(
    run: WorkerRun, attempt: Attempt, trainer: Any, tokenizer: Any, final: dict[str, Any], **fields: Any
) -> None:
    """The artifact of the run, with its :func:`manifest`, to ``<run>/artifact``.

    Every rank calls it: ZeRO-3/FSDP gather the weights from all ranks, and the manifest's peak memory is gathered.
    """
    stage = os.path.join(run.local_root, "artifact")
    record = manifest(run, attempt, trainer, final, **fields)
    export_artifact(trainer, tokenizer, run.loop_config["artifact_uri"], record, stage, run.rank, run.base_copy)
    drop_local_copies(run)


def drop_local_copies(run: WorkerRun) -> None:
    """The node's copies of what storage now holds: HF's checkpoint folders, the artifact's stage, resume and base
    copies (0.5-1 GB a run of a small model; 42 GB of them had piled up in one dev box's temp dir). Every rank is
    past its export first. The ``stage-<rank>`` folders stay: an async checkpoint upload may still read them (they
    hold hard links into HF's folders, so deleting those is safe) and Ray deletes each once uploaded."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    if run.local_rank != 0 or not os.path.isdir(run.local_root):
        return
    for entry in os.listdir(run.local_root):
        if not entry.startswith("stage-"):
            shutil.rmtree(os.path.join(run.local_root, entry), ignore_errors=True)
