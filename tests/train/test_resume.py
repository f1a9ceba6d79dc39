"""Nothing lost, nothing repeated: runs that resume after their driver died (real processes, SIGKILL).

- ``hfray train`` SIGKILLed mid-run: running the same job again resumes from its last committed checkpoint and
  trains exactly the steps left.
- A run resumed from the checkpoint at ``max_steps`` trains no further step (Hugging Face's Trainer trained one:
  step 25 of 24) and exports the model it had.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import tiny_job
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.storage import layout
from hfray.train.run import run_training

REPO = Path(__file__).resolve().parents[2]


def _one_worker_job(tmp_path: Path, data_files: dict[str, Path], max_steps: int, **training: object) -> JobConfig:
    # 256 rows / batch 8 = 32 steps per epoch: a budget that is not a multiple of it is where HF stepped past it.
    raw = tiny_job(
        tmp_path,
        data_files,
        training={"max_steps": max_steps, "eval_steps": 6, "logging_steps": 3, "learning_rate": 1e-2, **training},
        resources={"num_workers": 1, "cpus_per_worker": 1},
        storage={"num_to_keep": 2, "max_failures": 0},
    )
    return JobConfig.from_dict(raw)


def _committed(log: Path) -> list[dict]:
    return [r for r in read_metrics_log(str(log)) if r.get("checkpoint_path")] if log.is_file() else []


def _kill_train_after_first_checkpoint(job: JobConfig, tmp_path: Path, address: str) -> int:
    """``hfray train`` in its own process, SIGKILLed once a checkpoint is committed; the last committed step."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.to_dict()))
    log = Path(job.storage.path) / job.run_name / layout.METRICS_LOG
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO / "lib")}
    with open(tmp_path / "train.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hfray", "train", str(job_file)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 240
        while not _committed(log) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    kept = _committed(log)
    assert kept, (tmp_path / "train.log").read_text()[-3000:]
    assert not (log.parent / layout.ARTIFACT_DIR).exists()
    return max(r["step"] for r in kept)


def test_killed_train_process_resumes_and_a_run_at_max_steps_trains_no_further_step(ray_cluster, tmp_path, data_files):
    """SIGKILL the `hfray train` process itself (not a Ray worker), run the same job again: it resumes from the last
    committed checkpoint and trains exactly the steps left. Then, as if the driver had died between the last
    checkpoint and the export, the artifact removed: the next run exports the same model and trains no step."""
    job = _one_worker_job(tmp_path, data_files, max_steps=24)
    last = _kill_train_after_first_checkpoint(job, tmp_path, ray_cluster.get_runtime_context().gcs_address)
    assert last < 24

    resumed = run_training(job)

    assert resumed.run_name == job.run_name and not resumed.reused
    manifest = resumed.manifest
    start = manifest["resumed_from_step"]
    assert start >= last  # from a checkpoint committed before the kill, not from step 0
    log = read_metrics_log(layout.metrics_log_uri(resumed.run_dir))
    after = [r for r in log if r["hfray_resumed_from_step"] == start]
    assert after[0]["step"] == start + 6  # its first evaluation: the step count went on from the checkpoint
    assert manifest["global_step"] == 24 and max(r["step"] for r in log) == 24
    assert manifest["throughput"]["steps_this_attempt"] == 24 - start

    shutil.rmtree(resumed.artifact)
    again = run_training(job)

    log = read_metrics_log(layout.metrics_log_uri(again.run_dir))
    assert max(r["step"] for r in log) == 24  # HF's Trainer trained step 25 of 24 here
    assert again.manifest["global_step"] == 24 and again.manifest["resumed_from_step"] == 24
    assert again.manifest["throughput"]["steps_this_attempt"] == 0
    for key in ("eval_accuracy", "eval_loss"):  # the same best checkpoint, evaluated again: the same model
        assert round(again.metrics[key], 4) == round(resumed.metrics[key], 4), (again.metrics, resumed.metrics)
