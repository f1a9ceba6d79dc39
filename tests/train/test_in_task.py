"""``resources.launch: task``: a one-worker run in ONE Ray task (hfray.train.in_task), no Train controller."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import lm_job, synthetic_rows, tiny_job, worker_killed_after_checkpoint
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.storage import layout
from hfray.train.in_task import resolve_launch
from hfray.train.run import run_training


def _train_controllers() -> set[str]:
    """Ray Train controller actors the cluster has seen (alive or dead), by id (GCS's actor table)."""
    import ray

    return {a for a, info in ray._private.state.actors().items() if info.get("ActorClassName") == "TrainController"}


def test_a_one_worker_task_run_learns_resumes_after_its_process_dies_and_exports(ray_cluster, tmp_path, data_files):
    job = JobConfig.from_dict(
        tiny_job(
            tmp_path,
            data_files,
            training={
                "learning_rate": 8e-3,
                "per_device_train_batch_size": 32,
                "max_steps": 60,
                "eval_steps": 10,
                "logging_steps": 10,
            },
            resources={"num_workers": 1, "cpus_per_worker": 1, "launch": "task"},
            storage={"max_failures": 1, "num_to_keep": 2},
        )
    )
    controllers = _train_controllers()
    log_path = Path(job.storage.path) / job.run_name / layout.METRICS_LOG
    with worker_killed_after_checkpoint(str(log_path), 20) as killed:
        summary = run_training(job)
    assert killed, "the test never found the task's process to kill"
    assert _train_controllers() == controllers, "a Ray Train controller started for a task run"

    log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
    resumed = [r for r in log if r["hfray_resumed_from_step"] > 0]
    assert resumed, "no report came from the retried task"
    start = resumed[0]["hfray_resumed_from_step"]
    assert start >= killed["after_step"] and resumed[0]["step"] == start + 10  # the next step trained, from there
    assert {r["worker_pid"] for r in resumed}.isdisjoint({killed["pid"]})
    assert summary.manifest["global_step"] == 60
    evals = [r for r in log if "eval_loss" in r]
    assert evals[-1]["eval_loss"] < 0.5 * evals[0]["eval_loss"]

    from transformers import pipeline

    held_out = synthetic_rows(40, seed=99)
    predictions = pipeline("text-classification", model=summary.artifact)([r["text"] for r in held_out])
    assert sum(p["label"] == r["label"] for p, r in zip(predictions, held_out, strict=True)) >= 36


def test_task_launch_needs_one_worker_and_keeps_the_run_name(tmp_path, data_files):
    # How a run starts is not what it computes: the same run (name) either way, so one resumes the other.
    names = {
        JobConfig.from_dict(tiny_job(tmp_path, data_files, resources={"num_workers": 1, "launch": launch})).run_name
        for launch in ("auto", "train", "task")
    }
    assert len(names) == 1
    with pytest.raises(ConfigError, match=r"resources\.launch.*num_workers is 2"):
        JobConfig.from_dict(tiny_job(tmp_path, data_files, resources={"num_workers": 2, "launch": "task"}))


def test_task_launch_refuses_a_task_that_streams_ray_data_before_ray_starts(tmp_path, data_files):
    raw = lm_job(tmp_path, "masked-lm", tmp_path / "no-such-corpus.txt", resources={"num_workers": 1, "launch": "task"})
    # The refusal comes before anything reads the (missing) corpus, trains a tokenizer or connects to Ray.
    with pytest.raises(ConfigError, match=r"resources\.launch.*'task' cannot run masked-lm: it streams Ray Data"):
        run_training(JobConfig.from_dict(raw))


def test_auto_runs_one_worker_in_a_task_and_several_workers_or_a_stream_through_train(tmp_path, data_files):
    def launch(workers: int, streams_ray_data: bool, **resources: object) -> str:
        raw = tiny_job(tmp_path, data_files, resources={"num_workers": workers, **resources})
        return resolve_launch(JobConfig.from_dict(raw), streams_ray_data).resources.launch

    assert JobConfig.from_dict(tiny_job(tmp_path, data_files)).resources.launch == "auto"  # the default
    assert launch(1, False) == "task"
    assert launch(2, False) == "train"
    assert launch(1, True) == "train"  # MLM/CLM pre-training streams Ray Data to a Train worker group
    assert launch(1, False, launch="train") == "train"  # an explicit choice stays


def test_a_task_runs_driver_imports_no_ray_train_and_the_task_rebuilds_the_run(ray_cluster, tmp_path, data_files):
    """The driver of a one-task run sends the run as plain data (the job as a dict, re-validated in the task) and
    imports no Ray Train or Ray Data (with pandas, 0.4 s on 2 CPUs on its path to the task's submission; issue 19).
    The task builds the run itself: it trains (loss down) and reports as before. Checked in a fresh driver process,
    as a user's ``python train.py``: this test process has imported Ray Train long ago."""
    import json
    import os
    import subprocess
    import sys

    raw = tiny_job(
        tmp_path,
        data_files,
        training={"max_steps": 30, "eval_steps": 10, "logging_steps": 10, "learning_rate": 8e-3},
        resources={"num_workers": 1, "cpus_per_worker": 1},  # launch: auto -> one task
        tracking={"mlflow": False, "learning_curve": False},
    )
    code = f"""
import json, sys
from hfray.config import JobConfig
from hfray.train.run import run_training
summary = run_training(JobConfig.from_dict(json.loads({json.dumps(json.dumps(raw, default=str))})))
heavy = sorted(m for m in ("ray.train", "ray.data", "transformers") if m in sys.modules)
print(json.dumps({{"heavy": heavy, "run_dir": summary.run_dir, "cluster": summary.cluster}}))
"""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HFRAY_")}
    env = {**keep, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cluster"].startswith("Ray cluster at")  # the test's cluster, not one of its own
    # The checks thread imports torch, transformers (TrainingArguments, the tokenizer) and datasets (with pandas),
    # beside the connect; Ray Train and Ray Data never.
    assert not {"ray.train", "ray.data"} & set(result["heavy"]), result["heavy"]
    assert "transformers" in result["heavy"]  # the checks did run in this process
    log = read_metrics_log(layout.metrics_log_uri(result["run_dir"]))
    evals = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_a_task_that_raised_is_not_cancelled_so_failing_runs_leave_the_driver_alive(ray_cluster, tmp_path, data_files):
    """A run whose task raised (a data error, a crash) used to be force-cancelled after ``ray.get`` had raised. On
    Ray 2.60 that cancel of a finished task can kill the driver from C++ (task_manager.cc: 'An unexpected system
    state has occurred', exit 1, nothing on a captured stderr): it killed CI's pytest during test_user_errors. A
    fresh driver fails 40 task runs in a row and must live to say so; it died within seconds before the fix."""
    import json
    import os
    import subprocess
    import sys

    raw = tiny_job(tmp_path, data_files, resources={"num_workers": 1, "cpus_per_worker": 1, "launch": "task"})
    code = f"""
import json
from hfray.config import JobConfig
from hfray.errors import DataError
from hfray.train.in_task import TaskTrainer
from hfray.train.recipes import recipe_for

def build(spec):  # runs in the task: the run fails as a user's bad data does, at once
    raise DataError("data.train: row 7 has no label")

job = JobConfig.from_dict(json.loads({json.dumps(json.dumps(raw, default=str))}))
raised = 0
for i in range(40):
    try:
        TaskTrainer(job, recipe_for(job.task), f"fails-{{i}}", {{}}, build=build).fit()
    except DataError:
        raised += 1
print("raised", raised)
"""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HFRAY_")}
    env = {**keep, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "raised 40"
