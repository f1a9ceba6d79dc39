"""A sweep's plan, made on the driver before any trial starts: the metric and its mode, the step arithmetic
schedulers need (grace period, longest trial), where trials live, and the concurrency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hfray.config import CLASSIFICATION_METRICS, JobConfig, steps_per_epoch, total_steps
from hfray.data.splits import PreparedData
from hfray.errors import ConfigError, Problem
from hfray.storage import fs, layout

SCHEDULER_LOG = "hfray_scheduler_decisions.jsonl"  # the schedulers' decisions (hfray.tune.schedulers)
PERPLEXITY_TASKS = ("masked-lm", "causal-lm")  # they report eval_perplexity next to eval_loss


def sweep_metric(job: JobConfig) -> tuple[str, str]:
    """The metric schedulers compare, and its mode; it must be one the task reports at evaluation."""
    sweep = job.sweep
    assert sweep is not None
    metric = sweep.metric or job.evaluation.best_metric_key
    reported = ["eval_loss", *(f"eval_{m}" for m in job.evaluation.metrics)]
    if job.task in PERPLEXITY_TASKS:
        reported.append("eval_perplexity")
    if metric not in reported:
        hint = ""
        if metric.removeprefix("eval_") in CLASSIFICATION_METRICS:
            hint = f" (add {metric.removeprefix('eval_')!r} to evaluation.metrics)"
        raise ConfigError(
            [Problem("sweep.metric", f"{job.task} jobs report {reported} at each evaluation{hint}", metric, True)]
        )
    mode = sweep.mode
    if mode is None:
        mode = (
            job.evaluation.best_mode
            if metric == job.evaluation.best_metric_key
            else ("min" if metric in ("eval_loss", "eval_perplexity") else "max")
        )
    return metric, mode


def split_sizes(info: Any) -> dict[str, int]:
    """Rows per split the recipe's checks counted (``info`` of its preflight); {} where the workers count them:
    pre-training packs its blocks there."""
    if isinstance(info, dict) and isinstance(info.get("rows"), dict):  # TRL: sft, dpo
        return {k: int(v) for k, v in info["rows"].items()}
    return dict(getattr(info, "sizes", None) or {})  # PreparedData (text classification, the fine-tuning tasks)


def prepared_splits(info: Any) -> dict[str, Any]:
    """The row splits the checks prepared on the driver (text classification, the fine-tuning tasks); {} for the
    tasks whose workers read their data (language models, TRL)."""
    return dict(getattr(info, "splits", None) or {})  # PreparedData's; LMInfo and TRL's rows have none


def train_rows(info: Any) -> int:
    """Training rows the recipe's checks counted; 0 where the workers count them (pre-training's jobs must set
    ``training.max_steps``)."""
    return split_sizes(info).get("train", 0)


def data_facts(info: Any) -> dict[str, Any]:
    """What the exported best model's manifest says about its data."""
    if isinstance(info, PreparedData):
        return {"fingerprint": info.fingerprint, "sizes": info.sizes}
    if isinstance(info, dict):
        return {"sizes": info.get("rows", {})}
    return dict(getattr(info, "facts", {}))


def eval_interval_steps(job: JobConfig, n_train: int) -> int:
    if job.training.eval_strategy == "steps":
        return int(job.training.eval_steps or 1)
    return steps_per_epoch(job, n_train)


def longest_trial_steps(job: JobConfig, edges: list[JobConfig], n_train: int) -> int:
    """Steps of the longest trial the space allows (``edges``: the jobs of :func:`hfray.tune.space.check_space`)."""
    return max(total_steps(j, n_train) for j in [job, *edges])


def warmup_steps(job: JobConfig, n_train: int) -> int:
    """``training.warmup_steps`` in steps (HF reads a value below 1 as a fraction of all steps)."""
    w = job.training.warmup_steps
    return math.ceil(w * total_steps(job, n_train)) if w < 1 else int(w)


def longest_warmup_steps(job: JobConfig, edges: list[JobConfig], n_train: int) -> int:
    return max(warmup_steps(j, n_train) for j in [job, *edges])


def on_eval(steps: int, interval: int) -> int:
    """``steps`` rounded up to a whole number of evaluations: schedulers only see a trial at an evaluation."""
    return max(1, math.ceil(steps / interval)) * interval


def scheduler_steps(
    job: JobConfig, eval_interval: int, max_steps: int, warmup: int
) -> tuple[dict[str, int], list[str]]:
    """Grace period, longest trial and PBT interval, in steps and on evaluations; notes for values moved.

    Default grace period: the longest warmup the space allows, and at least a quarter of the longest trial,
    rounded up to an evaluation. A trial is not judged while its learning rate still ramps up (at 1 eval, ASHA
    stopped trials at the majority class mid-warmup), and with reduction factor 2 the rungs fall at 1/4 and 1/2
    of ``max_t``: a stopped trial still cost at most a quarter of a full one.
    """
    s = job.sweep.scheduler  # type: ignore[union-attr]
    notes = []
    max_t = max(s.max_t or max_steps, eval_interval)
    grace = s.grace_period or min(max(warmup, math.ceil(max_t / 4)), max_t)
    interval = s.perturbation_interval or max(warmup, eval_interval)
    aligned = {"grace_period": on_eval(grace, eval_interval), "perturbation_interval": on_eval(interval, eval_interval)}
    for key, given in (("grace_period", s.grace_period), ("perturbation_interval", s.perturbation_interval)):
        if given is not None and aligned[key] != given:
            notes.append(f"sweep.scheduler.{key} {given} moved to {aligned[key]}, the next evaluation")
    return {**aligned, "max_t": max(max_t, aligned["grace_period"])}, notes


# ----------------------------------------------------------------------------- plan


@dataclass
class SweepPlan:
    sweep_name: str
    sweep_dir: str
    trials_storage: str
    base_job: dict[str, Any]
    prepared: Any  # the recipe's preflight info: PreparedData for fine-tuning, the LM / TRL checks' facts
    metric: str
    mode: str
    eval_interval: int
    max_steps: int
    warmup_steps: int = 0  # the longest warmup the space allows
    grace_period: int = 1  # scheduler times, in steps, on evaluations (scheduler_steps)
    max_t: int = 1
    perturbation_interval: int = 1
    artifact_fields: dict[str, Any] = field(default_factory=dict)  # the recipe's: how the exported model loads
    needs_tune_checkpoints: bool = False
    max_concurrent: int = 1
    in_process: bool = False  # each trial trains in its Tune trial process (sweep.trial_in_process)
    no_skill: float | None = None  # the metric of a trial that learned nothing (holdout.no_skill); None: not checked
    scheduler_log: str = ""
    notes: list[str] = field(default_factory=list)


def sweep_name(job: JobConfig) -> str:
    """From the job as written (like run names): stable across retries, unique per job and space."""
    return f"{job.run_name}-sweep"


def make_plan(job: JobConfig, prepared: Any, name: str, edges: list[JobConfig]) -> SweepPlan:
    metric, mode = sweep_metric(job)
    sweep_dir = fs.join(job.storage.path, name)
    n_train = train_rows(prepared)
    interval, longest = eval_interval_steps(job, n_train), longest_trial_steps(job, edges, n_train)
    warmup = longest_warmup_steps(job, edges, n_train)
    steps, notes = scheduler_steps(job, interval, longest, warmup)
    return SweepPlan(
        sweep_name=name,
        sweep_dir=sweep_dir,
        trials_storage=fs.join(sweep_dir, layout.TRIALS_DIR),
        base_job=job.to_dict(),
        prepared=prepared,
        metric=metric,
        mode=mode,
        eval_interval=interval,
        max_steps=longest,
        warmup_steps=warmup,
        **steps,
        needs_tune_checkpoints=job.sweep.restores_checkpoints,  # type: ignore[union-attr]
        scheduler_log=fs.join(sweep_dir, SCHEDULER_LOG),
        notes=notes,
    )
