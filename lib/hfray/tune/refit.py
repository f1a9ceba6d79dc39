"""``sweep.refit: true``: the best configuration trained again on train + validation, exported as the sweep's model.

Selection is done once the sweep has picked a configuration; the validation rows then only help as training
data (the standard practice after model selection). The refit is an ordinary ``hfray train`` run of the best
trial's job, stored as ``<sweep>/refit``, with:

- ``data.train``: the sweep's train and validation rows, written as one file under ``<sweep>/refit_data``
  (after ``data.max_train_samples``, so it is exactly the rows the trials trained and were chosen on);
- ``data.validation``: the validation rows again: evaluations during the refit are on rows it trains on, for
  the learning curve only; ``evaluation.load_best_model_at_end`` is off, so nothing is selected on them and the
  exported model is the one at the end of the full budget;
- ``data.test`` unchanged: the run's artifact records its test metrics.

A larger validation split for the choice (:func:`refit_validation`): with the refit on, the validation rows are
trained on in the end anyway, so a sweep that carves its validation split off ``data.train`` (no ``data.validation``)
and whose job leaves ``data.validation_fraction`` unset carves :data:`REFIT_VALIDATION_FRACTION` instead of the
usual 0.1: the trials train on fewer rows, the choice among them is made on twice as many (a standard error about
0.7x as large), and the exported model still trains on every row. The extra rows are capped at
:data:`REFIT_VALIDATION_ROWS` in all: past ~2,000 rows the standard error of an accuracy (<= 1.1 points) is below the
gaps a sweep decides on, while every rung of every trial evaluates them all, so a larger data set carves
``max(0.1, 2000 / rows)`` (0.1, the usual, from 20,000 rows on). A job that sets ``data.validation`` or
``data.validation_fraction`` keeps what it says.

Cheaper than a full run, with the same training (same rows, hyperparameters and steps):

- :func:`refit_resources`: the refit runs alone where the sweep ran several trials at once, so a one-worker CPU job
  gets the CPUs the sweep's concurrent trials held (at most one node's), whole: torch's intra-op threads follow
  ``resources.cpus_per_worker`` (``hfray.train.worker.limit_threads``); on 2 cores two trials of 0.9 + 0.1 CPU
  give the refit 2 threads instead of 1. GPU and multi-worker jobs keep the trials' resources.
- :func:`refit_evaluations`: its evaluations select nothing (they are on rows it trains on), so it evaluates (and
  checkpoints, for a resume) about :data:`REFIT_EVALUATIONS` times, on a multiple of the trials' interval, instead
  of at every interval; its final evaluation and test metrics are unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import datasets

from hfray.config import JobConfig, total_steps
from hfray.errors import HfrayError
from hfray.storage import fs, layout
from hfray.train.run import run_training
from hfray.tune.plan import SweepPlan
from hfray.tune.space import trial_job_dict

REFIT_RUN, REFIT_DATA = "refit", "refit_data"
WRITERS = {"auto": "parquet", "parquet": "parquet", "csv": "csv", "json": "json"}
REFIT_EVALUATIONS = 3  # a learning curve's worth; each with its checkpoint, so a failed refit resumes
REFIT_VALIDATION_FRACTION = 0.2  # data.validation_fraction of a refit sweep whose job leaves it unset
REFIT_VALIDATION_ROWS = 2_000  # ... but no more carved rows than this, unless the usual fraction carves more


def refit_fraction(rows: int, usual: float) -> float:
    """The fraction of ``rows`` a refit sweep carves (module doc): :data:`REFIT_VALIDATION_FRACTION`, at most
    :data:`REFIT_VALIDATION_ROWS` rows, never less than the ``usual`` fraction."""
    return max(usual, min(REFIT_VALIDATION_FRACTION, REFIT_VALIDATION_ROWS / max(rows, 1)))


def refit_validation(job: JobConfig, count_rows: Callable[[], int]) -> tuple[JobConfig, str | None]:
    """``job`` with a larger ``data.validation_fraction`` for a ``sweep.refit`` sweep that carves its validation
    split and leaves the fraction unset (module doc; ``count_rows()``: the rows of ``data.train``, called only
    then), and a note saying so; else ``job`` unchanged and None."""
    data = job.data
    if job.sweep is None or not job.sweep.refit or data.validation is not None:
        return job, None
    if "validation_fraction" in data.model_fields_set:
        return job, None
    rows = count_rows()
    fraction = refit_fraction(rows, data.validation_fraction)
    if fraction == data.validation_fraction:
        return job, None
    raw = job.to_dict()
    raw["data"]["validation_fraction"] = fraction
    note = (
        f"sweep.refit: data.validation_fraction {fraction:.3g} (unset: {data.validation_fraction:g}; "
        f"~{round(fraction * rows):,} of {rows:,} rows) for a choice on more rows; "
        "the refit trains on train + validation"
    )
    return JobConfig.from_dict(raw, source="the sweep's job"), note


def refit_resources(resources: dict[str, Any], sweep_cpus: float, node_cpus: float) -> dict[str, Any]:
    """``resources`` of the refit (module doc): a one-worker CPU job gets ``min(sweep_cpus, node_cpus)`` CPUs, whole
    (never fewer than the trials had); ``sweep_cpus``: what the sweep's concurrent trials held at once."""
    if resources["num_workers"] != 1 or resources["gpus_per_worker"] > 0:
        return resources
    cpus = math.floor(min(sweep_cpus, node_cpus) + 1e-9)
    return {**resources, "cpus_per_worker": max(resources["cpus_per_worker"], cpus)}


def refit_evaluations(training: dict[str, Any], steps: int) -> dict[str, Any]:
    """``training`` of the refit (module doc): about :data:`REFIT_EVALUATIONS` evaluations over its ``steps``, each with
    a checkpoint, on a multiple of the trials' ``eval_steps``; ``eval_strategy: epoch`` is left as it is."""
    if training["eval_strategy"] != "steps":
        return training
    every = int(training["eval_steps"])
    times = max(1, math.ceil(steps / REFIT_EVALUATIONS / every))
    return {**training, "eval_steps": every * times, "checkpoint_every_n_evals": 1}


def sweep_cpus(plan: SweepPlan) -> tuple[float, float]:
    """CPUs the sweep's concurrent trials held, and the largest live node's CPUs (Ray is connected)."""
    import ray

    res, sweep = plan.base_job["resources"], plan.base_job["sweep"]
    per_trial = res["num_workers"] * res["cpus_per_worker"] + sweep["trial_driver_cpus"]
    nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return plan.max_concurrent * per_trial, max(nodes, default=0.0)


def _write(ds: datasets.Dataset, fmt: str, folder: str, name: str, dest: str) -> str:
    path = os.path.join(folder, f"{name}.{fmt}")
    getattr(ds, f"to_{fmt}")(path)
    return fs.join(dest, os.path.basename(path))


def write_refit_data(plan: SweepPlan, data_format: str) -> dict[str, str]:
    """train + validation as one file, and validation alone, under ``<sweep>/refit_data``; their URIs."""
    fmt = WRITERS.get(data_format)
    if fmt is None:
        raise HfrayError(f"sweep.refit: cannot write the train + validation rows as data.format {data_format!r}")
    splits = plan.prepared.splits
    train = splits["train"]
    validation = splits["validation"].cast(train.features)  # pandas-made string widths differ between files
    combined = datasets.concatenate_datasets([train, validation])
    dest = fs.join(plan.sweep_dir, REFIT_DATA)
    with tempfile.TemporaryDirectory(prefix="hfray-refit-") as stage:
        uris = {
            "train": _write(combined, fmt, stage, "train_validation", dest),
            "validation": _write(validation, fmt, stage, "validation", dest),
        }
        fs.upload_dir(stage, dest)
    return uris


def refit_job(plan: SweepPlan, params: dict[str, Any], cpus: tuple[float, float] = (0.0, 0.0)) -> JobConfig:
    """The refit's job; ``cpus``: :func:`sweep_cpus` (the default keeps the trials' resources)."""
    raw = trial_job_dict(plan.base_job, params, plan.sweep_dir)
    uris = write_refit_data(plan, raw["data"]["format"])
    raw["data"].update(train=uris["train"], validation=uris["validation"], max_train_samples=None)
    raw["evaluation"]["load_best_model_at_end"] = False
    raw["storage"]["run_name"] = REFIT_RUN
    raw["resources"] = refit_resources(raw["resources"], *cpus)
    rows = plan.prepared.sizes["train"] + plan.prepared.sizes["validation"]
    steps = total_steps(JobConfig.from_dict(raw, source="the sweep's refit job"), rows)
    raw["training"] = refit_evaluations(raw["training"], steps)
    return JobConfig.from_dict(raw, source="the sweep's refit job")


def refit_and_export(plan: SweepPlan, params: dict[str, Any], sweep_info: dict[str, Any]) -> tuple[str, dict]:
    """Train the refit run and copy its artifact to ``<sweep>/artifact``. Returns that path and the run's metrics."""
    job = refit_job(plan, params, sweep_cpus(plan))
    rows = plan.prepared.sizes["train"] + plan.prepared.sizes["validation"]
    every = f"{job.training.eval_steps} steps" if job.training.eval_strategy == "steps" else "epoch"
    print(
        f"[hfray] sweep.refit: training the best configuration on train + validation ({rows} rows), "
        f"{job.resources.cpus_per_worker:g} CPU(s) per worker, an evaluation every {every}"
    )
    summary = run_training(job)
    dest = fs.join(plan.sweep_dir, layout.ARTIFACT_DIR)
    with tempfile.TemporaryDirectory(prefix="hfray-refit-artifact-") as stage:
        local = fs.download_dir(summary.artifact, os.path.join(stage, "in"))
        manifest = json.loads(fs.read_text(fs.join(summary.artifact, layout.MANIFEST)))
        manifest["sweep"] = {**sweep_info, "refit": {"run": summary.run_name, "train_rows": rows}}
        out = os.path.join(stage, "out")
        shutil.copytree(local, out, ignore=shutil.ignore_patterns(layout.MANIFEST))
        with open(os.path.join(out, layout.MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        fs.remove_tree(dest)
        fs.upload_dir(out, dest)
    return dest, summary.metrics
