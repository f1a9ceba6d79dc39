"""Failures of the parts around a run, on real parts: an S3-compatible server (moto, real HTTP) stopped and started
again while checkpoints upload, and a worker node of a local multi-node Ray cluster killed mid-run.

Each run is ``hfray train`` in its own process, as an operator runs it; this process only controls the S3 server,
kills the node and reads what the runs left in S3. Slow (minutes): ``python -m pytest -m slow
tests/cluster/test_failures_cluster.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import tiny_job
from hfray.cluster.local import LocalRayCluster, client_env, free_port, start_local_ray_cluster

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "hfray-failures"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Every file of an HF checkpoint of these runs (one worker): a checkpoint missing one is partial.
CHECKPOINT_FILES = {"config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"}


class S3Server:
    """A moto S3 server on a fixed loopback port that can be stopped and started again (its data is kept)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def client(self) -> Any:
        import boto3

        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        return boto3.client("s3", endpoint_url=self.url, **creds)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalRayCluster]:
    """A head without CPUs and two 1-CPU worker nodes: a one-worker run can lose its node and go on on the other."""
    cluster = start_local_ray_cluster(workers=2, cpus_per_node=1, head_cpus=0, env=S3_ENV)
    yield cluster
    cluster.stop()


def _job(
    tmp_path: Path,
    data_files: dict[str, Path],
    s3: S3Server,
    name: str,
    every: int = 1,
    launch: str = "auto",
    **storage: Any,
) -> Path:
    """A one-worker job on the S3 server; a checkpoint every ``every`` evaluations."""
    raw = tiny_job(
        tmp_path,
        data_files,
        name=name,
        training={
            "learning_rate": 1e-2,
            "max_steps": 120,
            "eval_steps": 10,
            "logging_steps": 10,
            "checkpoint_every_n_evals": every,
        },
        resources={"num_workers": 1, "cpus_per_worker": 1, "launch": launch},
        storage={"path": f"s3://{BUCKET}/{name}", "endpoint_url": s3.url, "num_to_keep": 2, **storage},
        tracking={"mlflow": False},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(cluster: LocalRayCluster, job: Path) -> subprocess.Popen:
    """``hfray train`` in its own process; its output goes to ``output.log`` next to the job file."""
    env = {**os.environ, **S3_ENV, **client_env(), "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(REPO / "lib")}
    env.pop("AWS_ENDPOINT_URL_S3", None)  # the job's storage.endpoint_url points hfray at the server
    cmd = [sys.executable, "-m", "hfray", "train", str(job)]
    with open(job.with_name("output.log"), "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _output(tmp_path: Path) -> str:
    return (tmp_path / "output.log").read_text()


def _records(s3: S3Server, name: str) -> list[dict[str, Any]]:
    keys = [k for k in s3.keys(f"{name}/") if k.endswith("/hfray_metrics.jsonl")]
    if not keys:
        return []
    return [json.loads(line) for line in s3.read(keys[0]).decode().splitlines() if line.strip()]


def _wait_for_checkpoint(s3: S3Server, name: str, proc: subprocess.Popen, timeout: float = 300) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = [r for r in _records(s3, name) if r.get("checkpoint_path")]
        if ckpts:
            return ckpts[-1]
        assert proc.poll() is None, f"{name} ended before its first checkpoint"
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of {name} after {timeout} s")


def _checkpoints(s3: S3Server, name: str) -> dict[str, set[str]]:
    """Every checkpoint folder of the run in S3 and the file names in it."""
    found: dict[str, set[str]] = {}
    for key in s3.keys(f"{name}/"):
        parts = key.split("/")
        if len(parts) >= 4 and parts[2].startswith("checkpoint_step_"):
            found.setdefault(parts[2], set()).add("/".join(parts[3:]))
    return found


def _manifest(s3: S3Server, name: str) -> dict[str, Any]:
    key = next(k for k in s3.keys(f"{name}/") if k.endswith("/artifact/hfray_manifest.json"))
    return json.loads(s3.read(key))


# ----------------------------------------------------------------------------- storage down, then back


def test_storage_down_while_checkpoints_upload_then_back(three_nodes, s3, tmp_path, data_files):
    """The S3 server stops after the first checkpoint and comes back ~20 s later: uploads are retried with backoff,
    training finishes all its steps, and every checkpoint left in storage is whole."""
    name = "outage"
    proc = _train(three_nodes, _job(tmp_path, data_files, s3, name, every=2, retry_s=300))
    first = _wait_for_checkpoint(s3, name, proc)
    s3.stop()
    try:
        time.sleep(20)  # the outage (not a timing assertion): uploads and the metrics log fail meanwhile
    finally:
        s3.start()
    assert proc.wait(timeout=600) == 0, _output(tmp_path)[-5000:]
    logs = _output(tmp_path)
    assert "[hfray] storage: " in logs and "retrying in" in logs, logs[-5000:]  # the outage was met and retried

    records = _records(s3, name)
    manifest = _manifest(s3, name)
    assert manifest["global_step"] == 120 and max(r["step"] for r in records) == 120
    assert manifest["best"]["value"] == _best_accuracy(records)
    reported = {Path(r["checkpoint_path"]).name: r["step"] for r in records if r.get("checkpoint_path")}
    assert first["step"] in reported.values() and max(reported.values()) == 120
    kept = _checkpoints(s3, name)
    assert kept and set(kept) <= set(reported)  # nothing in storage that was not reported
    for folder, files in kept.items():
        assert files >= CHECKPOINT_FILES, (folder, files)  # whole, not partial
        state = json.loads(s3.read(f"{name}/{_run(s3, name)}/{folder}/trainer_state.json"))
        assert state["global_step"] == reported[folder]


def _best_accuracy(records: list[dict[str, Any]]) -> float:
    """The best checkpointed evaluation of a run (the job's metric for the best model is accuracy)."""
    return max(r["eval_accuracy"] for r in records if r.get("checkpoint_path"))


def _run(s3: S3Server, name: str) -> str:
    return next(k for k in s3.keys(f"{name}/") if k.endswith("/hfray_metrics.jsonl")).split("/")[1]


def test_storage_down_past_the_retry_budget_stops_with_the_last_checkpoint_intact(
    three_nodes, s3, tmp_path, data_files
):
    name = "down"
    proc = _train(three_nodes, _job(tmp_path, data_files, s3, name, retry_s=5, max_failures=0))
    last = _wait_for_checkpoint(s3, name, proc)
    s3.stop()
    try:
        proc.wait(timeout=600)
    finally:
        s3.start()
    logs = _output(tmp_path)
    assert proc.returncode != 0, logs[-4000:]
    # One message (whichever of the worker's upload or the controller's writes gave up first), no traceback.
    assert "hfray: error: storage: " in logs and "past storage.retry_s=5" in logs, logs[-4000:]
    assert "last committed checkpoint is intact" in logs
    folder = Path(last["checkpoint_path"]).name
    files = _checkpoints(s3, name)[folder]
    assert files >= CHECKPOINT_FILES, files
    state = json.loads(s3.read(f"{name}/{_run(s3, name)}/{folder}/trainer_state.json"))
    assert state["global_step"] == last["step"]


# ----------------------------------------------------------------------------- a node lost


def _worker_node_pid(cluster: LocalRayCluster, launch: str) -> int:
    """The pid of the `ray start` process of the node that runs the run's one worker: the alive Ray Train worker
    (``launch: train``) or the running ``hfray-run:`` task (``task``)."""
    if launch == "train":
        params = {"filter_keys": "class_name", "filter_predicates": "=", "filter_values": "RayTrainWorker"}
        found = httpx.get(f"{cluster.dashboard_url}/api/v0/actors", params={**params, "detail": "1", "limit": "100"},
                          timeout=30).json()["data"]["result"]["result"]  # fmt: skip
        alive = [a["node_id"] for a in found if a["state"] == "ALIVE"]
    else:
        found = httpx.get(f"{cluster.dashboard_url}/api/v0/tasks", params={"detail": "1", "limit": "1000"},
                          timeout=30).json()["data"]["result"]["result"]  # fmt: skip
        alive = [t["node_id"] for t in found if t["name"].startswith("hfray-run:") and t["state"] == "RUNNING"]
    assert len(alive) == 1, found
    nodes = httpx.get(f"{cluster.dashboard_url}/api/v0/nodes", params={"detail": "1"}, timeout=30).json()
    for node in nodes["data"]["result"]["result"]:
        if node["node_id"] == alive[0]:
            index = next(i for i, res in enumerate(cluster.node_resources) if set(res) <= set(node["resources_total"]))
            return cluster.pids[index]
    raise AssertionError(f"node {alive[0]} not found")


@pytest.fixture
def spare_nodes() -> Iterator[LocalRayCluster]:
    """As :func:`three_nodes`, one cluster per test: a node-loss test leaves its cluster with one worker node."""
    cluster = start_local_ray_cluster(workers=2, cpus_per_node=1, head_cpus=0, env=S3_ENV)
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("launch", ["train", "task"])  # task: the default (auto) for one worker
def test_worker_node_lost_mid_run_continues_on_the_other_node(spare_nodes, s3, tmp_path, data_files, launch):
    """SIGKILL every process of the node running the run's worker: Ray Train restarts the worker (or Ray retries the
    run's task) on the other node, which resumes from the last checkpoint in S3 and finishes the full step count."""
    name = f"nodeloss-{launch}"
    proc = _train(spare_nodes, _job(tmp_path, data_files, s3, name, launch=launch, max_failures=2))
    last = _wait_for_checkpoint(s3, name, proc)
    pid = _worker_node_pid(spare_nodes, launch)
    os.killpg(pid, signal.SIGKILL)  # the node's raylet, object store and workers: the node is gone
    assert proc.wait(timeout=900) == 0, _output(tmp_path)[-5000:]

    records = _records(s3, name)
    manifest = _manifest(s3, name)
    start = manifest["resumed_from_step"]
    assert start >= last["step"] > 0  # from a checkpoint in storage, committed before the node died
    assert start in {r["step"] for r in records if r.get("checkpoint_path") and r["hfray_resumed_from_step"] == 0}
    after = [r for r in records if r["hfray_resumed_from_step"] == start]
    assert after[0]["step"] == start + 10  # the step count went on from the checkpoint
    assert manifest["global_step"] == 120 and max(r["step"] for r in records) == 120
    assert manifest["best"]["value"] == _best_accuracy(records)  # the best model across both attempts
    assert pid not in spare_nodes.alive_pids()
