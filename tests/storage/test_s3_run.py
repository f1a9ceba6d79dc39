"""Runs whose storage is S3 (moto: a real S3 server on loopback, in this process), on a one-node local cluster.

Default suite: ``run_training`` in this process on the session cluster (tests/conftest.py), whose processes got
the S3 credentials from their environment, as a real cluster's nodes would, and the server's endpoint in the
runtime env, as hfray forwards ``storage.endpoint_url`` to a cluster it starts. Checkpoints, the metrics log and
the artifact go to the bucket; a killed worker resumes from a checkpoint read back from it.

Slow: the same through ``hfray train`` in a subprocess that starts its own local Ray cluster, where the job's
``storage.endpoint_url`` is what points hfray's processes at the server. The multi-node and failure cases are slow
tests too (tests/cluster/).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import yaml

from conftest import S3_ENV, moto_s3, resumed_start, session_s3_url, tiny_job, worker_killed_after_checkpoint
from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.storage import fs
from hfray.train.run import run_training

pytestmark = pytest.mark.ray  # it trains on a Ray cluster
BUCKET = "hfray-s3-run"
OWN_BUCKET = "hfray-s3-cli-run"


@pytest.fixture(scope="module")
def session_s3() -> Iterator[str]:
    """The S3 server at the endpoint the session Ray cluster's processes were started with."""
    url = session_s3_url()
    with moto_s3(BUCKET, port=int(url.rsplit(":", 1)[1])):
        yield url


@pytest.fixture
def s3_driver(monkeypatch) -> Callable[[str], None]:
    """Points this process (the driver, and the test's own reads of the bucket) at an S3 server with moto's
    credentials; undone after the test, with the endpoint hfray sets here from the job's ``storage.endpoint_url``."""

    def point_at(url: str) -> None:
        for key, value in S3_ENV.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)

    return point_at


def _children(uri: str) -> list[str]:
    """URIs of what is directly under ``uri`` in the bucket (nothing when it does not exist yet)."""
    fsys, path = fs.filesystem(uri)
    infos = fsys.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(fs.uri_of(fsys, info.path) for info in infos)


def _metrics_log(root: str, job: JobConfig) -> str:
    return fs.join(root, job.run_name, "hfray_metrics.jsonl")


def _s3_job(tmp_path: Path, data_files: dict[str, Path], root: str, endpoint: str, **training: int) -> dict[str, Any]:
    """One worker, tiny BERT, storage in the bucket; one restart allowed (the killed worker's)."""
    return tiny_job(
        tmp_path,
        data_files,
        name="s3run",
        training={"learning_rate": 1e-2, "logging_steps": training["eval_steps"], **training},
        resources={"num_workers": 1, "cpus_per_worker": 1},
        storage={"path": root, "endpoint_url": endpoint, "num_to_keep": 2, "max_failures": 1},
    )


def _check_run_in_bucket(root: str, killed: dict[str, Any], interval: int, max_steps: int, tmp_path: Path) -> None:
    """The run's checkpoints, metrics log and artifact are in the bucket; it resumed from a checkpoint there."""
    assert killed, "the test never found a worker to kill"
    (run_dir,) = _children(root)
    log = read_metrics_log(fs.join(run_dir, "hfray_metrics.jsonl"))
    # Resumed from a checkpoint it had written to S3 before the kill, and went on from its step.
    assert resumed_start(log, interval=interval) >= killed["after_step"]
    assert {r["worker_pid"] for r in log if r["hfray_resumed_from_step"] > 0}.isdisjoint({killed["pid"]})
    assert max(r["step"] for r in log) == max_steps
    ckpts = [p for p in _children(run_dir) if p.rsplit("/", 1)[-1].startswith("checkpoint_")]
    assert ckpts and all(p.startswith("s3://") for p in ckpts), ckpts
    # The artifact is in the bucket and loads from there as a transformers pipeline.
    pipe = load_artifact_pipeline(fs.join(run_dir, "artifact"))
    assert {p["label"] for p in pipe(["a test sentence"], top_k=None)[0]} == {"neg", "pos"}
    assert not Path(tmp_path / "runs").exists()  # nothing went to local storage


def test_a_run_on_the_session_cluster_checkpoints_resumes_and_exports_to_s3(
    ray_cluster, session_s3, s3_driver, tmp_path, data_files
):
    s3_driver(session_s3)
    root = f"s3://{BUCKET}/runs"
    job = JobConfig.from_dict(_s3_job(tmp_path, data_files, root, session_s3, max_steps=40, eval_steps=4))
    with worker_killed_after_checkpoint(_metrics_log(root, job), 4, poll_s=0.2) as killed:
        summary = run_training(job)
    assert summary.run_dir.startswith(f"{root}/")
    _check_run_in_bucket(root, killed, interval=4, max_steps=40, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def own_s3() -> Iterator[str]:
    """An S3 server on a free port, for a cluster that ``hfray train`` starts (it knows the endpoint from the job)."""
    with moto_s3(OWN_BUCKET) as url:
        yield url


@pytest.mark.slow  # ~60 s on quiet cores (its own hfray subprocess + cluster): over the default-suite budget
def test_hfray_train_on_its_own_cluster_checkpoints_resumes_and_exports_to_s3(own_s3, s3_driver, tmp_path, data_files):
    s3_driver(own_s3)  # this process's own reads of the bucket
    root = f"s3://{OWN_BUCKET}/runs"
    job = _s3_job(tmp_path, data_files, root, own_s3, max_steps=40, eval_steps=10)
    job["cluster"] = {"num_cpus": 2}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("AWS_ENDPOINT_URL_S3")  # the job's storage.endpoint_url must be what points hfray at moto
    with worker_killed_after_checkpoint(_metrics_log(root, JobConfig.from_dict(job)), 10, poll_s=0.2) as killed:
        proc = subprocess.run(
            [sys.executable, "-m", "hfray", "train", str(path)], env=env, capture_output=True, text=True, timeout=400
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_run_in_bucket(root, killed, interval=10, max_steps=40, tmp_path=tmp_path)
