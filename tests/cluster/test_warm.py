"""Warm workers (hfray.cluster.warm, issue 19): one-task runs on a running cluster start in a Ray worker that existed
before their driver did, with the training stack imported, run after run.

A real local cluster as ``hfray cluster up`` makes it (one warm worker), and two ``hfray train`` drivers one after
the other, as a user submits them. The runs' own timeline marks (``HFRAY_TIMELINE``) say when each process started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import tiny_job
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.cluster import warm
from hfray.cluster.local import LocalRayCluster, client_env, start_local_ray_cluster, warm_up
from hfray.storage import layout

pytestmark = pytest.mark.ray  # its own local cluster (~30 s in all on 2 CPUs)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def warm_cluster() -> Iterator[LocalRayCluster]:
    cluster = start_local_ray_cluster(workers=0, head_cpus=2)
    try:
        assert warm_up(cluster.address, 1) == 1  # the head's raylet took the request
        yield cluster
    finally:
        cluster.stop()


def _hfray(cluster: LocalRayCluster, *args: str, marks: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m hfray ARGS cluster.address=...`` as a user runs it against the cluster (its client env, no
    inherited ``RAY_ADDRESS``); ``marks``: the command's timeline file (``HFRAY_TIMELINE``)."""
    env = {**os.environ, **client_env(), "PYTHONPATH": str(REPO / "lib")}
    env.update({"HFRAY_TIMELINE": str(marks)} if marks is not None else {})
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "hfray", *args, f"cluster.address={cluster.address}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _marks(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train(cluster: LocalRayCluster, job_file: Path, marks: Path) -> list[dict[str, Any]]:
    done = _hfray(cluster, "train", str(job_file), "--fresh", marks=marks)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _marks(marks)


def _task_process(marks: list[dict[str, Any]]) -> tuple[int, float, dict[str, Any]]:
    """(pid, creation time, task_fn_start mark) of the run's task, from its timeline marks."""
    fn_start = next(m for m in marks if m["phase"] == "task_fn_start")
    created = next(m["t"] for m in marks if m["phase"] == "process_start" and m["pid"] == fn_start["pid"])
    return fn_start["pid"], created, fn_start


def test_one_task_runs_start_in_warm_workers_one_after_the_other(warm_cluster, tmp_path, data_files) -> None:
    job = tiny_job(
        tmp_path,
        data_files,
        training={"max_steps": 30, "eval_steps": 10, "learning_rate": 8e-3, "per_device_train_batch_size": 32},
        resources={"num_workers": 1, "cpus_per_worker": 1, "launch": "task"},
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    pids = []
    for attempt in range(2):  # the second run's warm worker is the one the first run's task started when it ended
        marks = _train(warm_cluster, job_file, tmp_path / f"marks{attempt}.jsonl")
        pid, created, fn_start = _task_process(marks)
        driver_start = next(m["t"] for m in marks if m["phase"] == "driver_run_start")
        assert created < driver_start - 1, f"run {attempt}: the task's process started after its driver"
        assert fn_start["warm"] and fn_start["preloaded"], fn_start  # Trainer stack imported before the function
        pids.append(pid)
        logs = (read_metrics_log(str(p)) for p in (tmp_path / "runs").rglob(layout.METRICS_LOG))
        evals = [r["eval_loss"] for log in logs for r in log if "eval_loss" in r and r.get("worker_pid") == pid]
        assert len(evals) == 3 and evals[-1] < evals[0], evals  # it trained, in that process
    assert pids[0] != pids[1]  # a process of a job ends with it: the second run's is a new warm one


def test_prestart_asks_every_alive_node_and_a_job_with_another_runtime_env_gets_a_fresh_process(
    warm_cluster,
) -> None:
    """Only jobs with warm.RUNTIME_ENV are handed warm workers (Ray matches runtime envs): hfray's other jobs, with
    their own runtime env, are untouched by them."""
    code = (
        "import json, sys, ray; from hfray.cluster import warm\n"
        f"ray.init(address={warm_cluster.address!r}, runtime_env={{'env_vars': {{'X': '1'}}}}, log_to_driver=False)\n"
        "print(json.dumps({'nodes': warm.prestart(1), 'loaded': ray.get(ray.remote(num_cpus=1)("
        "lambda: 'transformers.trainer' in sys.modules).remote())}))"
    )
    env = {**os.environ, **client_env(), "PYTHONPATH": str(REPO / "lib")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"nodes": 1, "loaded": False}
    assert f"{warm.__name__}.{warm.preload.__name__}" == warm.HOOK  # the hook names this module's function


def test_a_sweeps_in_process_trials_start_in_warm_workers(warm_cluster, tmp_path, data_files) -> None:
    """An in-process sweep driver asks the node for warm workers as it connects; Tune's trial processes are those:
    the Trainer stack was imported before each trial's function ran, and each trial trained there."""
    job = tiny_job(
        tmp_path,
        data_files,
        training={"max_steps": 20, "eval_steps": 10, "per_device_train_batch_size": 32},
        resources={"num_workers": 1, "cpus_per_worker": 0.9},
        storage={"num_to_keep": 1, "max_failures": 0},
    )
    grid = {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3]}}
    job["sweep"] = {"parameters": grid, "search": "grid", "num_samples": 1, "scheduler": {"type": "fifo"},
                    "trial_driver_cpus": 0.1, "max_concurrent_trials": 2, "max_failures": 0}  # fmt: skip
    job_file, marks_file = tmp_path / "sweep.yaml", tmp_path / "sweep_marks.jsonl"
    job_file.write_text(yaml.safe_dump(job))
    done = _hfray(warm_cluster, "sweep", str(job_file), "--fresh", marks=marks_file)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    starts = [m for m in _marks(marks_file) if m["phase"] == "trial_start"]
    assert len(starts) == 2 and all(m["warm"] and m["preloaded"] for m in starts), starts
    for start in starts:  # each trial trained in that process: its evaluations there, the loss down
        logs = [
            read_metrics_log(str(p)) for p in (tmp_path / "runs").rglob(layout.METRICS_LOG) if start["run"] in str(p)
        ]
        evals = [
            r["eval_loss"] for log in logs for r in log if "eval_loss" in r and r.get("worker_pid") == start["pid"]
        ]
        assert len(evals) == 2 and evals[-1] < evals[0], (start, evals)
    again = _hfray(warm_cluster, "sweep", str(job_file), marks=marks_file)  # without --fresh
    assert again.returncode == 0 and "was already complete" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert len([m for m in _marks(marks_file) if m["phase"] == "trial_start"]) == 2  # nothing trained again


def test_a_sweeps_check_that_fails_while_ray_starts_is_reported_and_no_trial_runs(warm_cluster, tmp_path, data_files):
    """A sweep's checks run while its driver connects (``cluster.overlap_checks``); one that fails meanwhile is the
    command's error, naming the field, and no trial starts."""
    job = tiny_job(tmp_path, data_files, data={"text_column": "body"}, resources={"num_workers": 1})
    job["sweep"] = {
        "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3]}},
        "search": "grid",
    }
    job_file = tmp_path / "bad_sweep.yaml"
    job_file.write_text(yaml.safe_dump(job))
    done = _hfray(warm_cluster, "sweep", str(job_file))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "data.text_column" in done.stderr and "body" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "runs").rglob("trials/*"))  # no trial started
