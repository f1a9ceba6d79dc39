"""Nothing lost, nothing repeated: runs that resume after their driver died (real processes, SIGKILL).

- ``hfray train --fresh`` SIGKILLed mid-run: running the job again, with or without ``--fresh``, resumes that run (the
  job's latest) from its last committed checkpoint and trains exactly the steps left.
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

import pytest
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


def _kill_fresh_train_after_first_checkpoint(job: JobConfig, tmp_path: Path, address: str) -> tuple[str, int]:
    """``hfray train --fresh`` in its own process, SIGKILLed once a checkpoint is committed: its run and the last
    committed step."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.to_dict()))
    storage = Path(job.storage.path)
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO / "lib")}
    with open(tmp_path / "train.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hfray", "train", str(job_file), "--fresh"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if any(_committed(log) for log in storage.glob(f"{job.run_name}-*/{layout.METRICS_LOG}")):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    runs = list(storage.glob(f"{job.run_name}-*/"))
    assert len(runs) == 1, (tmp_path / "train.log").read_text()[-3000:]
    kept = _committed(runs[0] / layout.METRICS_LOG)
    assert kept and not (runs[0] / layout.ARTIFACT_DIR).exists(), (tmp_path / "train.log").read_text()[-3000:]
    return runs[0].name, max(r["step"] for r in kept)


def test_killed_train_process_resumes_and_a_run_at_max_steps_trains_no_further_step(ray_cluster, tmp_path, data_files):
    """SIGKILL the `hfray train --fresh` process itself (not a Ray worker), run the job again (without --fresh): it
    resumes that run, the job's latest, from its last committed checkpoint and trains exactly the steps left. Then,
    as if the driver had died between the last checkpoint and the export, the artifact removed: the --fresh command
    again resumes the same run, exports the same model and trains no step."""
    job = _one_worker_job(tmp_path, data_files, max_steps=24)
    fresh_run, last = _kill_fresh_train_after_first_checkpoint(
        job, tmp_path, ray_cluster.get_runtime_context().gcs_address
    )
    assert last < 24

    resumed = run_training(job)

    assert resumed.run_name == fresh_run and not resumed.reused
    assert not (Path(job.storage.path) / job.run_name).exists()  # the stable name was set aside, not started
    manifest = resumed.manifest
    start = manifest["resumed_from_step"]
    assert start >= last  # from a checkpoint committed before the kill, not from step 0
    log = read_metrics_log(layout.metrics_log_uri(resumed.run_dir))
    after = [r for r in log if r["hfray_resumed_from_step"] == start]
    assert after[0]["step"] == start + 6  # its first evaluation: the step count went on from the checkpoint
    assert manifest["global_step"] == 24 and max(r["step"] for r in log) == 24
    assert manifest["throughput"]["steps_this_attempt"] == 24 - start

    shutil.rmtree(resumed.artifact)
    again = run_training(job, fresh=True)

    assert again.run_name == fresh_run and not again.reused

    log = read_metrics_log(layout.metrics_log_uri(again.run_dir))
    assert max(r["step"] for r in log) == 24  # HF's Trainer trained step 25 of 24 here
    assert again.manifest["global_step"] == 24 and again.manifest["resumed_from_step"] == 24
    assert again.manifest["throughput"]["steps_this_attempt"] == 0
    for key in ("eval_accuracy", "eval_loss"):  # the same best checkpoint, evaluated again: the same model
        assert round(again.metrics[key], 4) == round(resumed.metrics[key], 4), (again.metrics, resumed.metrics)


# ----------------------------------------------------------------------------- sweeps


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the sweep ended before {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n" + log.read_text()[-3000:])


def _files(folder: Path) -> dict[str, tuple[float, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # ~4-6 min on 2 loaded cores: python -m pytest -m slow tests/train/test_resume.py
def test_sigkilled_sweep_resumes_without_reopening_finished_trials(ray_cluster, tmp_path, data_files):
    """SIGKILL `hfray sweep` once one trial exported its artifact and another committed a checkpoint; `--resume`: the
    finished trial is not trained or written again, the other resumes from its checkpoint, no trial trains past
    max_steps, and the best checkpoint across all trials is exported."""
    from hfray.artifacts.manifest import read_manifest
    from hfray.tune.driver import run_sweep
    from hfray.tune.plan import sweep_name

    raw = tiny_job(
        tmp_path,
        data_files,
        training={"per_device_train_batch_size": 32, "max_steps": 40, "eval_steps": 10, "learning_rate": 8e-3},
        resources={"num_workers": 1, "cpus_per_worker": 0.9},
        storage={"num_to_keep": 2, "max_failures": 0},
    )
    raw["sweep"] = {
        "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3, 3e-3]}},
        "search": "grid",
        "num_samples": 1,
        "scheduler": {"type": "fifo"},
        "trial_driver_cpus": 0.1,
        "max_concurrent_trials": 2,  # trials 1 and 2 side by side: one finishes while the other is mid-run
        "max_failures": 0,
    }
    job = JobConfig.from_dict(raw)
    job_file = tmp_path / "sweep.yaml"
    job_file.write_text(yaml.safe_dump(job.to_dict()))
    trials = Path(job.storage.path) / sweep_name(job) / "trials"
    # Tune saves its state at most every 10 s; 600 s keeps the finished trial "running" in the saved state, as a
    # kill right after it finished left it in the reported case, so --resume re-opens it (and it must replay).
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "TUNE_GLOBAL_CHECKPOINT_S": "600"}
    out = tmp_path / "sweep.log"

    def finished() -> list[Path]:
        return [p.parent.parent for p in trials.glob("*/artifact/hfray_manifest.json")]

    def second_checkpointed() -> bool:
        return any(_committed(p / layout.METRICS_LOG) for p in trials.glob("*") if p not in finished())

    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hfray", "sweep", str(job_file)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            _wait_for(lambda: bool(finished()), 400, "a finished trial's artifact", proc, out)
            _wait_for(second_checkpointed, 300, "an unfinished trial's checkpoint", proc, out)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    done = finished()
    assert 1 <= len(done) < 3, out.read_text()[-3000:]
    before = {run: _files(run) for run in done}

    summary = run_sweep(job, resume=True)

    assert [t["stop_reason"] for t in summary.trials] == ["completed"] * 3, summary.trials
    for run, files in before.items():  # finished trials: records and artifact untouched (bytes and mtimes)
        after = _files(run)
        assert {k: after[k] for k in files} == files, run.name
        assert set(after) - set(files) <= {"learning_curve.json", "learning_curve.png"}  # the sweep report's
    runs = [p for p in trials.iterdir() if p.is_dir() and not p.name.startswith(".")]  # .hfray_cache: tokenized data
    logs = {p.name: read_metrics_log(str(p / layout.METRICS_LOG)) for p in runs}
    assert len(logs) == 3
    for name, records in logs.items():
        assert max(r["step"] for r in records) == 40, name  # every trial trained to max_steps, none past it
        assert read_manifest(str(trials / name / "artifact"))["global_step"] == 40
    interrupted = [n for n in logs if n not in {run.name for run in done}]
    assert any(max(r["hfray_resumed_from_step"] for r in logs[n]) > 0 for n in interrupted)  # from its checkpoint
    # The best checkpointed evaluation across all trials is the exported one.
    best = max(
        ((r["eval_accuracy"], r["checkpoint_path"]) for records in logs.values() for r in records
         if r.get("checkpoint_path")),
        key=lambda pair: pair[0],
    )  # fmt: skip
    manifest = read_manifest(summary.artifact)
    assert manifest["best"]["value"] == best[0] and manifest["sweep"]["name"] == sweep_name(job)


def test_fresh_sets_the_latest_run_aside_and_the_job_reaches_it_again(tmp_path):
    """The pointer file's rules, on real storage (no Ray): `--fresh` starts a run that becomes the job's latest."""
    from hfray.train.driver import latest_run

    storage, finished = str(tmp_path), set()
    assert latest_run(storage, "job-abc", False, finished.__contains__) == "job-abc"  # never --fresh: the stable name
    first = latest_run(storage, "job-abc", True, finished.__contains__)
    assert first.startswith("job-abc-") and (tmp_path / "job-abc.latest").is_file()
    assert latest_run(storage, "job-abc", False, finished.__contains__) == first  # the job again: its latest run
    assert latest_run(storage, "job-abc", True, finished.__contains__) == first  # --fresh again, unfinished: resumed
    finished.add(first)
    time.sleep(1.1)  # run names carry the start time to the second
    second = latest_run(storage, "job-abc", True, finished.__contains__)
    assert second not in {first, "job-abc"}  # the finished run set aside for a new one
    assert latest_run(storage, "job-abc", False, finished.__contains__) == second


@pytest.mark.slow  # four short runs, ~2-4 min on 2 loaded cores: python -m pytest -m slow tests/train/test_resume.py
@pytest.mark.parametrize("workers", [1, 2])
def test_same_seed_same_data_same_job_same_metrics(ray_cluster, tmp_path, data_files, workers):
    """Two runs of one job (only the run name differs): every evaluation's metrics agree to the printed precision."""

    def evaluations(run_name: str) -> list[tuple[int, float, float]]:
        raw = tiny_job(
            tmp_path,
            data_files,
            training={"max_steps": 24, "eval_steps": 6, "learning_rate": 1e-2},
            resources={"num_workers": workers, "cpus_per_worker": 1},
            storage={"run_name": run_name, "max_failures": 0},
        )
        summary = run_training(JobConfig.from_dict(raw))
        log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
        evals = [(r["step"], round(r["eval_loss"], 4), round(r["eval_accuracy"], 4)) for r in log if "eval_loss" in r]
        return [*evals, (summary.manifest["global_step"], round(summary.metrics["eval_loss"], 4), -1.0)]

    first, second = evaluations("first"), evaluations("second")
    assert [step for step, *_ in first] == [6, 12, 18, 24, 24]
    assert first == second
