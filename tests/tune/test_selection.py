"""Selection honesty: a noisy validation split is reported with its numbers, the chosen model is scored on
``data.test``, and ``sweep.refit`` trains the best configuration on train + validation and exports it.

One real sweep on the 2-CPU session cluster (0.9-CPU worker + 0.1-CPU trial driver per trial, like
tests/tune/test_sweep.py): two learning rates that both learn the task, a 16-row validation split, a 96-row test split.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import synthetic_rows, tiny_job, write_csv
from hfray.artifacts.manifest import read_manifest
from hfray.config import JobConfig
from hfray.tune.holdout import selected_trial_test, standard_error
from hfray.tune.refit import (
    REFIT_VALIDATION_FRACTION,
    refit_evaluations,
    refit_fraction,
    refit_resources,
    refit_validation,
)


def test_standard_error_of_accuracy_shrinks_with_rows_and_loss_has_none():
    assert standard_error("eval_accuracy", 0.5, 100) == pytest.approx(math.sqrt(0.25 / 100))
    assert standard_error("eval_accuracy", 0.8, 1000) < standard_error("eval_accuracy", 0.8, 100)
    assert standard_error("eval_accuracy", 1.0, 16) > 0.05  # a perfect score on 16 rows is not a certainty
    assert standard_error("eval_loss", 0.3, 100) is None


def test_refit_takes_the_cpus_the_trials_held_and_evaluates_a_few_times():
    one = {"num_workers": 1, "cpus_per_worker": 0.9, "gpus_per_worker": 0}
    # two trials of 0.9 + 0.1 CPU at once on a 2-CPU node: the refit's one worker gets 2 (torch threads follow)
    assert refit_resources(one, 2.0, 2.0)["cpus_per_worker"] == 2
    assert refit_resources(one, 8.0, 4.0)["cpus_per_worker"] == 4  # at most one node's
    assert refit_resources(one, 0.5, 2.0)["cpus_per_worker"] == 0.9  # never fewer than a trial had
    for kept in ({**one, "num_workers": 2}, {**one, "gpus_per_worker": 0.25}):
        assert refit_resources(kept, 8.0, 8.0) == kept
    steps = {"eval_strategy": "steps", "eval_steps": 25, "checkpoint_every_n_evals": 2}
    # 207 steps (3,300 rows of batch 16): every 75 steps (75, 150, and the final evaluation), a checkpoint at each
    assert refit_evaluations(steps, 207) == {**steps, "eval_steps": 75, "checkpoint_every_n_evals": 1}
    assert refit_evaluations(steps, 40)["eval_steps"] == 25
    epoch = {"eval_strategy": "epoch", "eval_steps": None, "checkpoint_every_n_evals": 1}
    assert refit_evaluations(epoch, 500) == epoch


def test_a_refit_sweep_chooses_on_a_larger_carved_validation_split_unless_the_job_says_otherwise(tmp_path, data_files):
    """With the refit on, the validation rows are trained on in the end: a sweep that carves its validation split
    and leaves data.validation_fraction unset carves 0.2 of train instead of 0.1 (the trials' rows counted)."""
    from hfray.tune.driver import prepare_sweep

    raw = tiny_job(tmp_path, data_files, resources={"num_workers": 1, "cpus_per_worker": 0.9})
    raw["data"].pop("validation")  # 256 rows in data.train only
    raw["sweep"] = {"parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-2}}}

    def carved(sweep: dict[str, Any], **data: Any) -> tuple[dict[str, int], list[str]]:
        job = JobConfig.from_dict({**raw, "data": {**raw["data"], **data}, "sweep": {**raw["sweep"], **sweep}})
        _, plan = prepare_sweep(job)
        return plan.prepared.sizes, plan.notes

    assert REFIT_VALIDATION_FRACTION == 0.2
    sizes, notes = carved({"refit": True})
    assert (sizes["train"], sizes["validation"]) == (204, 52)  # ceil(0.2 * 256) held out
    assert any("sweep.refit: data.validation_fraction 0.2" in n for n in notes), notes
    sizes, notes = carved({"refit": True}, validation_fraction=0.1)  # given in the job: kept, even at the default
    assert (sizes["train"], sizes["validation"]) == (230, 26) and not any("validation_fraction" in n for n in notes)
    sizes, _ = carved({"refit": False})
    assert (sizes["train"], sizes["validation"]) == (230, 26)
    given = JobConfig.from_dict({**raw, "data": {**raw["data"], "validation": str(data_files["validation"])},
                                 "sweep": {**raw["sweep"], "refit": True}})  # fmt: skip
    assert refit_validation(given, lambda: 1 / 0) == (given, None)  # data.validation is the split: nothing counted


def test_a_refit_sweeps_larger_carve_is_capped_at_2000_rows_and_never_below_the_usual_fraction():
    assert refit_fraction(3_300, 0.1) == 0.2  # 660 rows
    assert refit_fraction(10_000, 0.1) == 0.2  # 2,000 rows: the cap
    assert round(refit_fraction(16_000, 0.1) * 16_000) == 2_000
    assert refit_fraction(20_000, 0.1) == refit_fraction(1_000_000, 0.1) == 0.1  # the usual fraction carves more


def test_the_selected_checkpoint_reuses_its_trials_test_metrics_only_when_the_trial_exported_those_weights(tmp_path):
    from types import SimpleNamespace

    from hfray.artifacts.manifest import FORMAT

    run = tmp_path / "trials" / "t_00003"
    (run / "artifact").mkdir(parents=True)
    checkpoint = str(run / "checkpoint_step_00000150")
    metrics = {"eval_accuracy": 0.80, "test_accuracy": 0.7916, "test_loss": 0.45, "test_runtime": 17.6}

    def plan(swept: str = "training.learning_rate", splits: tuple[str, ...] = ("train", "validation", "test")) -> Any:
        prepared = SimpleNamespace(splits=dict.fromkeys(splits), sizes={"test": 1281})
        return SimpleNamespace(prepared=prepared, base_job={"sweep": {"parameters": {swept: {}}}})

    def trial_exported(best_step: int, load_best: bool) -> None:
        manifest = {"format": FORMAT, "job": {"evaluation": {"load_best_model_at_end": load_best}},
                    "best": {"step": best_step, "metric": "accuracy"}, "metrics": metrics}  # fmt: skip
        (run / "artifact" / "hfray_manifest.json").write_text(json.dumps(manifest))

    assert selected_trial_test(checkpoint, 150, plan()) is None  # the trial was stopped early: no artifact
    trial_exported(150, load_best=True)
    reused = {"test_accuracy": 0.7916, "test_loss": 0.45, "test_rows": 1281}  # no timings
    assert selected_trial_test(checkpoint, 150, plan()) == reused
    assert selected_trial_test(checkpoint, 125, plan()) is None  # the trial's best is another step: other weights
    assert selected_trial_test(checkpoint, 150, plan(swept="data.max_length")) is None  # its test rows may differ
    assert selected_trial_test(checkpoint, 150, plan(splits=("train", "validation"))) is None  # no data.test
    trial_exported(150, load_best=False)  # its artifact holds its last step's weights
    assert selected_trial_test(checkpoint, 150, plan()) is None


def _accuracy_on(artifact: str, rows: list[dict[str, str]]) -> float:
    from hfray.artifacts.loading import load_artifact_pipeline

    pipe = load_artifact_pipeline(artifact)
    predicted = [p["label"] for p in pipe([r["text"] for r in rows])]
    return sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


def _checkpoint_accuracy(checkpoint: str, rows: list[dict[str, str]]) -> float:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=checkpoint, tokenizer=checkpoint)
    predicted = [p["label"] for p in pipe([r["text"] for r in rows])]
    return sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


def _driver_test_accuracy(artifact: str, rows: list[dict[str, str]], raw: dict[str, Any]) -> float:
    from types import SimpleNamespace

    import datasets

    from hfray.tune.holdout import heldout_metrics

    prepared = SimpleNamespace(splits={"test": datasets.Dataset.from_list(rows)}, labels=["neg", "pos"])
    scores = heldout_metrics(artifact, SimpleNamespace(prepared=prepared), JobConfig.from_dict(raw))  # type: ignore[arg-type]
    assert scores is not None
    return scores["test_accuracy"]


def _steps_reached(run_dir: Path) -> int:
    lines = (run_dir / "hfray_metrics.jsonl").read_text().splitlines()
    return max(json.loads(line)["step"] for line in lines if line.strip())


@pytest.mark.usefixtures("ray_cluster")
def test_small_validation_warns_test_metrics_are_reported_and_refit_trains_on_train_plus_validation(tmp_path, capfd):
    from hfray.tune.driver import run_sweep

    test_rows = synthetic_rows(96, seed=3)
    files = {
        "train": write_csv(tmp_path / "train.csv", synthetic_rows(256, seed=1)),
        "validation": write_csv(tmp_path / "validation.csv", synthetic_rows(16, seed=2)),
    }
    raw = tiny_job(
        tmp_path,
        files,
        resources={"num_workers": 1, "cpus_per_worker": 0.9},
        # epochs, not max_steps: the refit's step count shows how many rows it trained on
        training={"per_device_train_batch_size": 32, "max_steps": -1, "num_train_epochs": 6, "eval_steps": 8},
    )
    raw["data"]["test"] = str(write_csv(tmp_path / "test.csv", test_rows))
    raw["sweep"] = {
        "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, 6e-3]}},
        "search": "grid",
        "num_samples": 1,
        "scheduler": {"type": "fifo"},
        "refit": True,
        "trial_driver_cpus": 0.1,
        "max_concurrent_trials": 2,
        "max_failures": 0,
    }
    summary = run_sweep(JobConfig.from_dict(raw))
    out = capfd.readouterr().out
    report = Path(summary.sweep_dir, "sweep_report.md").read_text()

    # 16 validation rows: two good trials cannot be told apart; the warning gives the numbers.
    assert "[hfray] warning: the best trial" in out
    match = re.search(r"by (\d\.\d+), less than 2 standard errors \(2 x (\d\.\d+)\) of eval_accuracy on 16", report)
    assert match, report
    assert float(match.group(1)) < 2 * float(match.group(2))

    # Refit: train + validation = 272 rows, 6 epochs of 9 batches of 32 -> 54 steps (the trials: 256 rows, 48 steps).
    refit_run = Path(summary.sweep_dir, "refit")
    assert _steps_reached(refit_run) == 54
    # ... alone on the 2-CPU cluster after two trials of 0.9 + 0.1 CPU: one worker with 2 CPUs, evaluated every 24 steps
    refit_job = read_manifest(str(refit_run / "artifact"))["job"]
    assert refit_job["resources"]["cpus_per_worker"] == 2 and refit_job["training"]["eval_steps"] == 24
    evaluated = [json.loads(line)["step"] for line in (refit_run / "hfray_metrics.jsonl").read_text().splitlines()]
    assert {24, 48} <= set(evaluated) and not {8, 16, 32, 40} & set(evaluated), evaluated
    assert all(_steps_reached(Path(summary.sweep_dir, "trials", t["runs"][-1])) == 48 for t in summary.trials)
    manifest = read_manifest(summary.artifact)
    assert manifest["data"]["sizes"]["train"] == 272
    assert manifest["sweep"]["trial_id"] == summary.best["trial_id"] and manifest["sweep"]["refit"]["train_rows"] == 272

    # data.test in the report: the exported (refit) model's accuracy as a fresh pipeline measures it, and the
    # selected checkpoint's. (6 epochs: from the 272 rows' order this tiny model needs ~40 steps to learn the task,
    # also under a plain HF Trainer; from the 256 rows' ~16.)
    assert "Held-out test (data.test, 96 rows" in report
    lines = report.splitlines()
    refit_line = next(row for row in lines if row.startswith("| exported: refit"))
    measured = _accuracy_on(summary.artifact, test_rows)
    assert measured >= 0.8 and f"| {measured:.4f} |" in refit_line, (refit_line, measured)
    selected = next(row for row in lines if row.startswith(f"| selected checkpoint: trial {summary.best['trial_id']}"))
    sweep_json = json.loads(Path(summary.sweep_dir, "hfray_sweep.json").read_text())
    checkpoint = next(t["best_checkpoint"] for t in sweep_json["trials"] if t["trial_id"] == summary.best["trial_id"])
    assert f"| {_checkpoint_accuracy(checkpoint, test_rows):.4f} |" in selected, selected
    # ... taken from the best trial's own artifact (FIFO: it completed and exported that checkpoint's weights with its
    # test metrics, loss included), not scored again on the driver (whose pipeline has no loss)
    assert "test_loss" in sweep_json["test"], sweep_json["test"]
    # ... and the driver's pipeline, which scores a selected checkpoint no trial exported, measures the same
    best_artifact = str(Path(checkpoint).parent / "artifact")
    assert _driver_test_accuracy(best_artifact, test_rows, raw) == pytest.approx(sweep_json["test"]["test_accuracy"])
