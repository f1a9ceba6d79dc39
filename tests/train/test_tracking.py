"""Dashboards and tracking of a real run: TensorBoard events, MLflow (queried back), the learning curve
PNG with its diagnosis, and ``hfray runs``. One tiny two-worker run serves the module."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import synthetic_rows, tiny_job, write_csv
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.train.arguments import check_training_arguments
from hfray.train.tracking.curves import diagnose

STEPS = [6, 12, 18, 24]


@pytest.fixture(scope="module")
def tracked(ray_cluster, tmp_path_factory) -> dict[str, Any]:
    from hfray.train.run import run_training

    tmp = tmp_path_factory.mktemp("tracked")
    data = {
        "train": write_csv(tmp / "train.csv", synthetic_rows(256, 1)),
        "validation": write_csv(tmp / "val.csv", synthetic_rows(64, 2)),
    }
    uri = f"sqlite:///{tmp}/mlflow/mlflow.db"
    job = JobConfig.from_dict(
        tiny_job(
            tmp,
            data,
            name="tracked",
            training={"learning_rate": 1e-2},  # the default 2e-3 can sit at chance for 24 steps
            tracking={"mlflow": True, "mlflow_tracking_uri": uri, "progress_bar": True},
        )
    )
    summary = run_training(job)
    return {"summary": summary, "run_dir": Path(summary.run_dir), "uri": uri, "root": tmp / "runs"}


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file (TFRecord framing: length, crc, Event, crc), read with tensorboardX's protos."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_hold_every_evaluation(tracked):
    scalars = _tensorboard_scalars(tracked["run_dir"] / "tensorboard")
    assert [s for s, _ in scalars["eval/accuracy"]] == STEPS
    assert [s for s, _ in scalars["eval/loss"]] == STEPS
    assert scalars["train/loss"][-1][1] < scalars["train/loss"][0][1]  # the run learned


def test_mlflow_query_finds_params_metrics_and_artifacts(tracked):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracked["uri"])
    name = tracked["summary"].run_name
    mlflow.set_tracking_uri(tracked["uri"])
    runs = mlflow.search_runs(
        experiment_names=["tracked"], filter_string=f"tags.`hfray.run_name` = '{name}'", output_format="list"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert sorted(m.step for m in history) == STEPS
    assert run.data.metrics["eval_accuracy"] == next(m.value for m in history if m.step == STEPS[-1])
    assert max(m.value for m in history) >= 0.8  # the metrics are the run's real evaluations
    assert run.data.params["training.learning_rate"] == "0.01"
    assert run.data.params["model.architecture.hidden_size"] == "32"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curve.png", "hfray_manifest.json", "hfray_metrics.jsonl"} <= artifacts
    assert run.data.tags["hfray.diagnosis"] in {"overfitting", "still improving", "converged"}


def test_learning_curve_png_is_written_and_non_empty(tracked):
    import matplotlib.image

    png = tracked["run_dir"] / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05  # drawn lines and text, not a blank canvas
    curve = json.loads((tracked["run_dir"] / "learning_curve.json").read_text())
    assert curve["metric"] == "eval_accuracy" and curve["best_step"] in STEPS


def test_hfray_runs_lists_the_run_with_its_best_metric(tracked, capsys):
    from hfray.cli import main

    assert main(["runs", str(tracked["root"]), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (row,) = [r for r in rows if r["name"] == tracked["summary"].run_name]
    best = tracked["summary"].manifest["best"]
    assert row["status"] == "complete" and row["metric"] == "eval_accuracy"
    assert row["best"] == pytest.approx(best["value"]) and row["best_step"] == best["step"] and row["steps"] == 24
    assert main(["runs", str(tracked["root"])]) == 0
    assert tracked["summary"].run_name in capsys.readouterr().out


def _records(train: list[float], evals: list[float]) -> list[dict[str, Any]]:
    return [
        {"step": 10 * (i + 1), "train_loss": t, "eval_loss": e}
        for i, (t, e) in enumerate(zip(train, evals, strict=True))
    ]


@pytest.mark.parametrize(
    ("train", "evals", "verdict"),
    [
        ([1.0, 0.6, 0.3, 0.1, 0.05], [1.0, 0.7, 0.6, 0.8, 1.1], "overfitting"),
        ([1.0, 0.8, 0.6, 0.45, 0.3], [1.0, 0.85, 0.7, 0.55, 0.4], "still improving"),
        ([1.0, 0.5, 0.4, 0.4, 0.4], [1.0, 0.6, 0.5, 0.5, 0.505], "converged"),
        ([1.0, 0.5], [1.0, 0.6], "too few evaluations"),
    ],
)
def test_diagnosis_reads_the_curves(train, evals, verdict):
    result = diagnose(_records(train, evals))
    assert result["verdict"] == verdict
    if verdict == "overfitting":
        assert result["best_step"] == 30 and "step 30" in result["message"]


def test_a_failed_run_is_killed_in_mlflow_and_its_resubmission_continues_it(tmp_path):
    """The controller opens the MLflow run at its first report; a run that fails before one still gets its
    MLflow run (KILLED), and the resubmitted job (same run name) continues that run to FINISHED."""
    import mlflow

    from hfray.train.controller import TrackingCallback
    from hfray.train.tracking.driver import realized, tracked_run
    from hfray.train.tracking.mlflow import ensure_mlflow_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = {"train": tmp_path / "t.csv", "validation": tmp_path / "v.csv"}
    raw = tiny_job(tmp_path, data, name="killed", tracking={"mlflow": True, "mlflow_tracking_uri": uri})
    job = JobConfig.from_dict({**raw, "tracking": {**raw["tracking"], "learning_curve": False}})
    with pytest.raises(RuntimeError, match="worker died"), tracked_run(job, "run-a") as callbacks:
        (driver,) = [c for c in realized(callbacks) if isinstance(c, TrackingCallback)]
        assert driver.mlflow_run is None  # nothing opened before training
        raise RuntimeError("worker died")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.status == "KILLED" and run.data.params["training.max_steps"] == "24"

    with tracked_run(job, "run-a") as callbacks:
        (driver,) = [c for c in realized(callbacks) if isinstance(c, TrackingCallback)]
        driver.after_report(None, [{"step": 6, "eval_accuracy": 0.5}], None)  # as the controller calls it
        assert driver.mlflow_run is not None and driver.mlflow_run.run_id == run.info.run_id
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval_accuracy")] == [0.5]
    assert ensure_mlflow_run(driver.mlflow_plan).run_id == run.info.run_id  # one run per run name


def test_mlflow_on_but_not_installed_is_refused_before_training(tmp_path, data_files, monkeypatch):
    # It was found at the run's first checkpoint, after training (seen on a GPU host whose environment lacked it).
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` and find_spec see when it is missing
    job = JobConfig.from_dict(tiny_job(tmp_path, data_files, tracking={"mlflow": True}))
    with pytest.raises(ConfigError, match=r"MLflow is not installed.*set tracking\.mlflow=false") as err:
        check_training_arguments(job)  # every recipe's driver checks, before any worker trains
    assert [p.location for p in err.value.problems] == ["tracking.mlflow"]
    monkeypatch.delitem(sys.modules, "mlflow")
    check_training_arguments(job)  # installed: no problem
