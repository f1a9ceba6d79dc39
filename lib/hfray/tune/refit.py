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
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import datasets

from hfray.config import JobConfig
from hfray.errors import HfrayError
from hfray.storage import fs, layout
from hfray.train.run import run_training
from hfray.tune.plan import SweepPlan
from hfray.tune.space import trial_job_dict

REFIT_RUN, REFIT_DATA = "refit", "refit_data"
WRITERS = {"auto": "parquet", "parquet": "parquet", "csv": "csv", "json": "json"}


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


def refit_job(plan: SweepPlan, params: dict[str, Any]) -> JobConfig:
    raw = trial_job_dict(plan.base_job, params, plan.sweep_dir)
    uris = write_refit_data(plan, raw["data"]["format"])
    raw["data"].update(train=uris["train"], validation=uris["validation"], max_train_samples=None)
    raw["evaluation"]["load_best_model_at_end"] = False
    raw["storage"]["run_name"] = REFIT_RUN
    return JobConfig.from_dict(raw, source="the sweep's refit job")


def refit_and_export(plan: SweepPlan, params: dict[str, Any], sweep_info: dict[str, Any]) -> tuple[str, dict]:
    """Train the refit run and copy its artifact to ``<sweep>/artifact``. Returns that path and the run's metrics."""
    job = refit_job(plan, params)
    rows = plan.prepared.sizes["train"] + plan.prepared.sizes["validation"]
    print(f"[hfray] sweep.refit: training the best configuration on train + validation ({rows} rows)")
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
