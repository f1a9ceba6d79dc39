"""A run whose storage is S3 (moto: a real S3 server on loopback, in this process), on a one-node local cluster.

``hfray train`` runs as a subprocess that starts its own local Ray cluster (its processes get the S3 credentials
from the environment, as a real cluster's nodes would, and the endpoint from the job's ``storage.endpoint_url``).
Checkpoints, the metrics log and the artifact go to the bucket; a killed worker resumes from a checkpoint read
back from it. The multi-node and failure cases are slow tests (tests/cluster/).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import resumed_start, tiny_job
from hfray.cluster.local import free_port

pytestmark = pytest.mark.ray  # it starts a Ray cluster (in the hfray subprocess)
BUCKET = "hfray-s3-run"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=url, **creds).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def _children(uri: str) -> list[str]:
    """URIs of what is directly under ``uri`` in the bucket (nothing when it does not exist yet)."""
    import pyarrow.fs as pafs

    from hfray.storage import fs

    fsys, path = fs.filesystem(uri)
    infos = fsys.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(fs.uri_of(fsys, info.path) for info in infos)


def _kill_after_checkpoint(root: str, min_step: int, killed: dict[str, Any], done: threading.Event) -> None:
    """SIGKILL the training worker once the run's metrics log on S3 lists a checkpoint at min_step or later."""
    from hfray.artifacts.metrics_log import read_metrics_log
    from hfray.storage import fs

    while not done.is_set():
        logs = [fs.join(run, "hfray_metrics.jsonl") for run in _children(root)]
        records = read_metrics_log(logs[0]) if logs and fs.exists(logs[0]) else []
        ckpts = [r for r in records if r.get("checkpoint_path") and r["step"] >= min_step]
        if ckpts:
            killed["after_step"], killed["pid"] = ckpts[-1]["step"], ckpts[-1]["worker_pid"]
            os.kill(killed["pid"], signal.SIGKILL)
            return
        time.sleep(0.2)


@pytest.mark.slow  # ~60 s on quiet cores (its own hfray subprocess + cluster): over the default-suite budget
def test_a_run_on_s3_checkpoints_resumes_and_exports_there(moto_s3, tmp_path, data_files, monkeypatch):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.artifacts.metrics_log import read_metrics_log

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3)  # this process's own reads of the bucket
    root = f"s3://{BUCKET}/runs"
    job = tiny_job(
        tmp_path,
        data_files,
        name="s3run",
        training={"learning_rate": 1e-2, "max_steps": 40, "eval_steps": 10, "logging_steps": 10},
        resources={"num_workers": 1, "cpus_per_worker": 1},
        cluster={"num_cpus": 2},
        storage={"path": root, "endpoint_url": moto_s3, "num_to_keep": 2, "max_failures": 1},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("AWS_ENDPOINT_URL_S3")  # the job's storage.endpoint_url must be what points hfray at moto
    killed: dict[str, Any] = {}
    done = threading.Event()
    killer = threading.Thread(target=_kill_after_checkpoint, args=(root, 10, killed, done), daemon=True)
    killer.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hfray", "train", str(path)], env=env, capture_output=True, text=True, timeout=400
        )
    finally:
        done.set()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert killed, "the test never found a worker to kill"

    from hfray.storage import fs

    (run_dir,) = _children(root)
    log = read_metrics_log(fs.join(run_dir, "hfray_metrics.jsonl"))
    # Resumed from a checkpoint it had written to S3 before the kill, and went on from its step.
    assert resumed_start(log, interval=10) >= killed["after_step"]
    assert max(r["step"] for r in log) == 40
    ckpts = [p for p in _children(run_dir) if p.rsplit("/", 1)[-1].startswith("checkpoint_")]
    assert ckpts and all(p.startswith("s3://") for p in ckpts), ckpts
    # The artifact is in the bucket and loads from there as a transformers pipeline.
    pipe = load_artifact_pipeline(fs.join(run_dir, "artifact"))
    assert {p["label"] for p in pipe(["a test sentence"], top_k=None)[0]} == {"neg", "pos"}
    assert not Path(tmp_path / "runs").exists()  # nothing went to local storage
