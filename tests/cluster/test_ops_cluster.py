"""hfray as operators run it: a real two-node Ray cluster on this machine (``hfray.cluster.local``), an
S3-compatible server (moto, real HTTP) as the runs' shared storage, and the Ray Job Submission API.

One cluster and one S3 server serve the whole module: starting them costs most of its time.
Drivers run as subprocesses (``hfray train``, ``ray job submit``-style jobs), as they would for an
operator; this test process only talks HTTP (S3, the Job API, Serve).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import S3_ENV, boto_creds, moto_s3, resumed_start, tiny_job
from hfray.cluster.local import LocalRayCluster, client_env, free_port, start_local_ray_cluster

# Minutes on 2 shared cores (cluster start ~30-55 s, each test 2-4.5 min): behind -m slow, not the default suite.
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "hfray-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback with one bucket; credentials are moto's dummies, from the environment."""
    with moto_s3(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[LocalRayCluster]:
    """Head + one worker node, 1 CPU each; nodes get the S3 credentials as a real cluster's would."""
    cluster = start_local_ray_cluster(workers=1, cpus_per_node=1, env=S3_ENV)
    yield cluster
    cluster.stop()
    assert not cluster.alive_pids()


def _driver_env(cluster: LocalRayCluster, **extra: str) -> dict[str, str]:
    env = {**os.environ, **S3_ENV, **client_env(), "RAY_ADDRESS": cluster.address}
    env.pop("AWS_ENDPOINT_URL_S3", None)  # the job's storage.endpoint_url must be what points hfray at moto
    env.update(extra)
    env["PYTHONPATH"] = str(REPO / "lib")
    return env


def _write_job(path: Path, job: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(job))
    return path


def _s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **boto_creds())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _train_worker_nodes(cluster: LocalRayCluster) -> set[str]:
    """Node ids of every Ray Train worker actor the cluster ran (the state API keeps dead actors)."""
    resp = httpx.get(
        f"{cluster.dashboard_url}/api/v0/actors",
        params={
            "filter_keys": "class_name",
            "filter_predicates": "=",
            "filter_values": "RayTrainWorker",
            "detail": "1",
            "limit": "100",
        },
        timeout=30,
    )
    return {a["node_id"] for a in resp.json()["data"]["result"]["result"]}


def test_two_node_training_on_s3_storage_then_serving(two_nodes, s3_endpoint, tmp_path, data_files):
    """Workers on both nodes (STRICT_SPREAD) train, checkpoint and export through S3 only; the artifact serves."""
    job = tiny_job(
        tmp_path,
        data_files,
        name="multinode",
        # As test_train's learning test: the default 2e-3 for 24 steps can stay at chance level.
        training={"learning_rate": 1e-2, "max_steps": 48, "eval_steps": 8, "checkpoint_every_n_evals": 2},
        resources={"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD"},
        storage={"path": f"s3://{BUCKET}/runs", "endpoint_url": s3_endpoint, "num_to_keep": 2, "max_failures": 0},
        tracking={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow/mlflow.db"},
    )
    path = _write_job(tmp_path / "job.yaml", job)
    proc = subprocess.run(
        [sys.executable, "-m", "hfray", "train", str(path)],
        env=_driver_env(two_nodes),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_name = next(line.split()[2].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("[hfray] run "))
    keys = _s3_keys(s3_endpoint, f"runs/{run_name}/")
    ckpts = sorted({k.split("/")[2] for k in keys if k.split("/")[2].startswith("checkpoint_step_")})
    assert ckpts, keys
    last = f"runs/{run_name}/{ckpts[-1]}/"
    # Both ranks uploaded their own RNG state from their own node; rank 0 the model and trainer state.
    for name in ("model.safetensors", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"):
        assert last + name in keys
    assert f"runs/{run_name}/artifact/hfray_manifest.json" in keys
    # Dashboards follow the run to S3: the learning curve and TensorBoard events (written on the driver's node).
    assert f"runs/{run_name}/learning_curve.png" in keys
    assert any(k.startswith(f"runs/{run_name}/tensorboard/events.out.tfevents") for k in keys)
    assert len(_train_worker_nodes(two_nodes)) == 2  # one worker per node: checkpoints crossed nodes via S3

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **boto_creds())
    body = s3.get_object(Bucket=BUCKET, Key=f"runs/{run_name}/artifact/hfray_manifest.json")["Body"].read()
    manifest = json.loads(body)
    log = s3.get_object(Bucket=BUCKET, Key=f"runs/{run_name}/hfray_metrics.jsonl")["Body"].read().decode()
    assert manifest["metrics"]["eval_accuracy"] >= 0.8, log + proc.stdout[-4000:]
    assert not (tmp_path / "runs").exists()  # nothing went to local storage
    _serve_and_classify(two_nodes, s3_endpoint, run_name, tmp_path)


def _serve_and_classify(cluster: LocalRayCluster, endpoint: str, run_name: str, tmp_path: Path) -> None:
    """Sync the artifact from S3 (as an operator would) and serve it with ``hfray serve`` on the two-node cluster."""
    from hfray.storage.fs import download_dir

    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ.update(S3_ENV)
    try:
        local = download_dir(f"s3://{BUCKET}/runs/{run_name}/artifact", str(tmp_path / "served"))
    finally:
        os.environ.pop("AWS_ENDPOINT_URL_S3")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hfray",
            "serve",
            local,
            "--port",
            str(port),
            "--num-cpus",
            "0.5",
            "--ray-address",
            cluster.address,
        ],
        env=_driver_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        from hfray.serving.driver import wait_healthy

        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify",
            json={"inputs": ["wonderful superb film", "awful dull plot"]},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        labels = [top[0]["label"] for top in resp.json()["results"]]
        assert labels == ["pos", "neg"]
    finally:
        server.terminate()
        server.wait(timeout=60)


# ----------------------------------------------------------------------------- ray job submit


def _wait_status(client: Any, job_id: str, wanted: set[str], timeout_s: float = 300) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in wanted:
            return status
        assert status not in {"FAILED"} - wanted, client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    raise AssertionError(f"job {job_id} not {wanted} after {timeout_s} s:\n{client.get_job_logs(job_id)[-3000:]}")


def _checkpointed(run_dir: Path) -> list[dict[str, Any]]:
    log = run_dir / "hfray_metrics.jsonl"
    if not log.is_file():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("checkpoint_path")]


def test_job_submit_stop_mid_run_then_resubmit_resumes(two_nodes, tmp_path, data_files, monkeypatch):
    """jobs/train.py --fresh through the Job Submission API: submit, status, logs, stop mid-run; the last checkpoint
    survives the stop intact and the resubmitted job (the same command) resumes that run from it and finishes."""
    from ray.job_submission import JobSubmissionClient
    from transformers import AutoModelForSequenceClassification

    for key, value in client_env().items():
        monkeypatch.setenv(key, value)
    job = tiny_job(
        tmp_path,
        data_files,
        name="submitted",
        training={"max_steps": 240, "eval_steps": 8, "logging_steps": 4},
        resources={"num_workers": 1, "cpus_per_worker": 1},
        tracking={"mlflow": False},
    )
    path = _write_job(tmp_path / "job.yaml", job)
    client = JobSubmissionClient(two_nodes.dashboard_url)
    # --fresh, as in the reported case: the resubmitted same command must reach the run the first one started.
    submit = {"entrypoint": f"python jobs/train.py {path} --fresh", "runtime_env": {"working_dir": str(REPO)}}

    first = client.submit_job(**submit)
    _wait_status(client, first, {"RUNNING"})
    run_dir: Path | None = None
    deadline = time.time() + 300
    while time.time() < deadline:  # stop once a checkpoint has been committed, well before step 240
        runs = [p for p in (tmp_path / "runs").glob("submitted-*") if _checkpointed(p)]
        if runs:
            run_dir = runs[0]
            break
        assert str(client.get_job_status(first).value) == "RUNNING", client.get_job_logs(first)[-3000:]
        time.sleep(0.5)
    assert run_dir is not None, client.get_job_logs(first)[-3000:]
    assert client.stop_job(first)
    assert _wait_status(client, first, {"STOPPED"}, timeout_s=60) == "STOPPED"
    assert "[hfray] run submitted-" in client.get_job_logs(first)

    kept = _checkpointed(run_dir)
    assert not (run_dir / "artifact").exists()  # stopped mid-run: nothing exported
    last = Path(kept[-1]["checkpoint_path"])
    assert kept[-1]["step"] < 240 and (last / "trainer_state.json").is_file()
    AutoModelForSequenceClassification.from_pretrained(last)  # the checkpoint is whole, not half-written

    second = client.submit_job(**submit)
    assert _wait_status(client, second, {"SUCCEEDED"}) == "SUCCEEDED"
    logs = client.get_job_logs(second)
    resumed = json.loads((run_dir / "artifact" / "hfray_manifest.json").read_text())
    # The second job went on from the last committed checkpoint (reports every 8 steps from there), not step 0.
    log = [json.loads(line) for line in (run_dir / "hfray_metrics.jsonl").read_text().splitlines() if line]
    start = resumed_start(log, interval=8)
    assert resumed["resumed_from_step"] == start >= kept[-1]["step"] > 0, logs[-3000:]
    assert f"at step {resumed['resumed_from_step']}" in logs and resumed["global_step"] == 240
    assert [p.name for p in (tmp_path / "runs").glob("submitted-*") if p.is_dir()] == [run_dir.name]  # one run
    assert {j.submission_id for j in client.list_jobs()} >= {first, second}
