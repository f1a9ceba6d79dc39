"""Real 2-worker Ray Train runs (DDP over gloo) of a tiny BERT built from a config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    check_manifest,
    synthetic_rows,
    tiny_job,
    worker_killed_after_checkpoint,
)
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.storage import layout
from hfray.train.run import run_training


def _log(summary) -> list[dict]:
    return read_metrics_log(layout.metrics_log_uri(summary.run_dir))


def test_two_workers_learn_report_every_eval_and_export(ray_cluster, tmp_path, data_files):
    job = JobConfig.from_dict(
        tiny_job(
            tmp_path,
            data_files,
            training={"learning_rate": 1e-2, "max_steps": 48, "eval_steps": 8, "checkpoint_every_n_evals": 2},
        )
    )
    summary = run_training(job)
    log = _log(summary)

    # Every evaluation reached Ray, also the ones without a checkpoint (HF's own callback reports only at saves).
    evals = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in evals] == [8, 16, 24, 32, 40, 48]
    assert [r["has_checkpoint"] for r in evals] == [0, 1, 0, 1, 0, 1]
    assert evals[-1]["eval_loss"] < 0.5 * evals[0]["eval_loss"]
    assert log[-1]["train_loss"] < log[0]["train_loss"]

    # Ray kept num_to_keep fs, each a resumable HF checkpoint with every rank's RNG state.
    kept = sorted(p.name for p in Path(summary.run_dir).glob("checkpoint_step_*"))
    assert len(kept) == 2
    files = set(os.listdir(Path(summary.run_dir) / kept[-1]))
    assert {"trainer_state.json", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= files
    # Uploaded in the background (storage.async_upload, the default): Ray deleted each rank's staging folder.
    from hfray.train.launch import local_root

    local = Path(local_root(job.storage.path, summary.run_name))
    assert job.storage.async_upload and len(list(local.glob("stage-*"))) == 2
    assert not list(local.glob("stage-*/rank*"))
    # Nothing else stays on the node once storage has it: HF's checkpoint folders and the artifact's stage are gone.
    assert sorted(p.name for p in local.iterdir()) == ["stage-0", "stage-1"]

    # The artifact is slim, carries a manifest, and loads with a plain transformers pipeline.
    artifact = Path(summary.artifact)
    assert not list(artifact.glob("optimizer*")) and not list(artifact.glob("rng_state*"))
    manifest = json.loads((artifact / layout.MANIFEST).read_text())
    check_manifest(manifest)
    assert manifest["labels"] == ["neg", "pos"]
    assert manifest["global_step"] == 48
    assert manifest["data"]["sizes"] == {"train": 256, "validation": 64}
    assert {"ray", "transformers", "torch"} <= set(manifest["versions"])
    # Both workers' tokenized data went to one cache entry next to the runs (hfray.data.cache): later runs read it.
    assert len(list((Path(job.storage.path) / ".hfray_cache" / "tokenized").iterdir())) == 1
    assert manifest["metrics"]["eval_accuracy"] >= 0.9
    # Where the start-up went, for every run (no HFRAY_TIMELINE needed): the driver's phases, then rank 0's, in
    # order, all within the run's own wall time.
    phases = [(p["phase"], p["role"]) for p in manifest["timeline"]]
    landmarks = [("driver_run_start", "driver"), ("driver_ray_connected", "driver"), ("process_start", "rank0")]
    landmarks += [("worker_imports", "rank0"), ("worker_tokenized", "rank0"), ("first_step_end", "rank0")]
    assert [p for p in phases if p in landmarks] == landmarks, phases
    seconds = [p["s"] for p in manifest["timeline"]]
    assert seconds == sorted(seconds) and seconds[0] == 0 and 0 < seconds[-1] < summary.wall_seconds

    from transformers import pipeline

    held_out = synthetic_rows(40, seed=99)
    predictions = pipeline("text-classification", model=str(artifact))([r["text"] for r in held_out])
    accuracy = sum(p["label"] == r["label"] for p, r in zip(predictions, held_out, strict=True)) / len(held_out)
    assert accuracy >= 0.9

    # Running the same job again is a no-op that returns the finished run.
    again = run_training(job)
    assert again.reused and again.run_name == summary.run_name and again.metrics == summary.metrics


def test_early_stopping_ends_a_run_that_does_not_improve(ray_cluster, tmp_path, data_files):
    job = JobConfig.from_dict(
        tiny_job(
            tmp_path,
            data_files,
            training={"learning_rate": 1e-9, "max_steps": 60, "eval_steps": 6, "early_stopping_patience": 2},
            evaluation={"metric_for_best_model": "loss", "metrics": ["accuracy"]},
        )
    )
    summary = run_training(job)
    evals = [r["step"] for r in _log(summary) if "eval_loss" in r]
    assert summary.manifest["global_step"] < 60
    assert len(evals) <= 4


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster, tmp_path, data_files):
    job = JobConfig.from_dict(
        tiny_job(
            tmp_path,
            data_files,
            training={"learning_rate": 1e-2, "max_steps": 100, "eval_steps": 10, "logging_steps": 10},
            storage={"max_failures": 2, "num_to_keep": 2},
        )
    )
    log_path = tmp_path / "runs" / job.run_name / layout.METRICS_LOG
    with worker_killed_after_checkpoint(str(log_path), 30) as killed:
        summary = run_training(job)
    assert killed, "the test never found a worker to kill"

    log = _log(summary)
    resumed = [r for r in log if r["hfray_resumed_from_step"] > 0]
    assert resumed, "no report came from a resumed worker group"
    start = resumed[0]["hfray_resumed_from_step"]
    # It resumed from a checkpoint reported before the kill, not from scratch...
    assert start >= 30 and start % 10 == 0
    assert start in {r["step"] for r in log if r.get("checkpoint_path") and r["hfray_resumed_from_step"] == 0}
    assert start >= killed["after_step"]
    assert {r["worker_pid"] for r in resumed}.isdisjoint({killed["pid"]})
    # ...continued counting from there, and finished the full step count.
    assert resumed[0]["step"] == start + 10
    assert summary.manifest["resumed_from_step"] == start
    assert summary.manifest["global_step"] == 100
    assert max(r["step"] for r in log) == 100


@pytest.mark.parametrize("weights", [[1.0, 1.0], [3.0, 0.5]])
def test_weighted_loss_matches_torch_cross_entropy(weights):
    import torch
    import torch.nn.functional as F

    from hfray.train.recipes.classification.worker import weighted_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(8, 2), torch.randint(0, 2, (8,))
    ours = weighted_loss(weights)({"logits": logits}, labels, num_items_in_batch=None)
    ref = F.cross_entropy(logits, labels, weight=torch.tensor(weights), reduction="sum") / 8
    assert torch.allclose(ours, ref)
    if weights == [1.0, 1.0]:
        assert torch.allclose(ours, F.cross_entropy(logits, labels))


def test_failed_checks_on_a_running_cluster_end_the_started_workers_untrained(ray_cluster, tmp_path, data_files):
    """cluster.overlap_checks: the workers boot while the driver checks the job; a bad column is still reported as
    itself, no step runs, and the run leaves no folder behind. The same job with the column right then trains."""
    from hfray.errors import DataError
    from hfray.train.driver import overlaps_checks
    from hfray.train.recipes import recipe_for

    bad = JobConfig.from_dict(tiny_job(tmp_path, data_files, data={"label_column": "sentiment"}))
    assert overlaps_checks(bad, recipe_for(bad.task))  # this process is attached to a running cluster
    with pytest.raises(DataError, match="data.label_column 'sentiment'"):
        run_training(bad)
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())

    good = JobConfig.from_dict(tiny_job(tmp_path, data_files, training={"max_steps": 12, "eval_steps": 6}))
    summary = run_training(good)
    assert [r["step"] for r in _log(summary) if "eval_loss" in r] == [6, 12]
    assert not any(p.name.startswith(bad.run_name) for p in runs.iterdir())


def test_final_validation_metrics_reuse_the_logged_evaluation_of_the_exported_weights():
    from types import SimpleNamespace

    from hfray.train.worker import final_eval_metrics

    history = [
        {"step": 25, "loss": 0.6},
        {"step": 25, "eval_loss": 0.5, "eval_accuracy": 0.7},
        {"step": 50, "eval_loss": 0.4, "eval_accuracy": 0.8},
        {"step": 54, "eval_loss": 0.45, "eval_accuracy": 0.75},  # HF's evaluation at the last step
    ]
    evaluated: list[str] = []

    def trainer(load_best: bool, best_step: int | None, log: list[dict], last: int = 54) -> SimpleNamespace:
        state = SimpleNamespace(log_history=log, best_global_step=best_step, global_step=last)
        return SimpleNamespace(
            state=state,
            args=SimpleNamespace(load_best_model_at_end=load_best),
            evaluate=lambda dataset, metric_key_prefix: evaluated.append(dataset) or {"eval_loss": 9.0},
        )

    assert final_eval_metrics(trainer(True, 50, history), "validation")["eval_accuracy"] == 0.8  # the best's weights
    assert final_eval_metrics(trainer(False, 50, history), "validation")["eval_accuracy"] == 0.75  # the last step's
    assert not evaluated
    # the last step was not evaluated (no evaluations, or a history without it): one more pass
    assert final_eval_metrics(trainer(False, 50, history[:3]), "validation") == {"eval_loss": 9.0}
    assert final_eval_metrics(trainer(False, None, [], last=8), "validation") == {"eval_loss": 9.0}
    assert evaluated == ["validation", "validation"]


def test_test_rows_are_scored_shortest_first_and_none_is_lost():
    import datasets

    from hfray.train.recipes.classification.worker import shortest_first

    ids = [[1] * n for n in (9, 3, 64, 3, 20)]
    rows = datasets.Dataset.from_dict({"input_ids": ids, "label": [0, 1, 0, 1, 1]})
    ordered = shortest_first(rows)
    assert [len(x) for x in ordered["input_ids"]] == [3, 3, 9, 20, 64]
    assert sorted(zip(map(len, ordered["input_ids"]), ordered["label"], strict=True)) == sorted(
        zip(map(len, ids), rows["label"], strict=True)
    )


def test_validation_scored_shortest_first_keeps_its_metrics_with_less_padding(tmp_path, data_files):
    """The classification recipe evaluates validation (every rung of a sweep) and test rows shortest first: a real
    Trainer evaluation of the same model gives the same accuracy and loss (up to float rounding) in either order,
    while its batches carry fewer padded tokens."""
    import random

    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from hfray.model import loading
    from hfray.train.recipes.classification.metrics import classification_metrics_fn
    from hfray.train.recipes.classification.worker import shortest_first

    cfg = JobConfig.from_dict(tiny_job(tmp_path, data_files)).model  # tiny BERT, MiniLM's tokenizer
    cfg = cfg.model_copy(update={"tokenizer": loading.absolute_model_source(cfg.tokenizer)})
    tokenizer = loading.load_tokenizer(cfg)
    set_seed(0)
    model = loading.build_classifier(cfg, ["neg", "pos"], tokenizer)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(POSITIVE + NEGATIVE + NEUTRAL, k=rng.randint(2, 40))) for _ in range(96)]
    rows = datasets.Dataset.from_dict({"text": texts, "label": [rng.randint(0, 1) for _ in texts]})
    encoded = rows.map(lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True)
    encoded = encoded.remove_columns(["text"])
    collate = DataCollatorWithPadding(tokenizer)
    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=16, report_to=[], use_cpu=True)
    metrics = classification_metrics_fn(["accuracy"])
    trainer = Trainer(model=model, args=args, data_collator=collate, compute_metrics=metrics)

    def padded(ds: datasets.Dataset) -> int:
        batches = [ds[i : i + 16]["input_ids"] for i in range(0, len(ds), 16)]
        return sum(len(b) * max(map(len, b)) for b in batches)

    ordered = shortest_first(encoded)
    assert padded(ordered) < 0.75 * padded(encoded)
    as_given, shortest = trainer.evaluate(encoded), trainer.evaluate(ordered)
    assert shortest["eval_accuracy"] == as_given["eval_accuracy"]
    assert shortest["eval_loss"] == pytest.approx(as_given["eval_loss"], rel=1e-5)
