"""``sweep.trial_in_process``: one-worker trials train in their Tune trial process (Ray Train's local mode,
``hfray.train.local``), with checkpoints in the run's storage, the best exported, and ASHA's stops honoured.

Budget on 2 CPUs: an in-process trial holds its worker's 0.9 CPU plus the 0.1-CPU trial driver, so two run at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_sweep import sweep_job, trial_pids

from conftest import check_manifest
from hfray.artifacts.manifest import read_manifest
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.tune.plan import SCHEDULER_LOG
from hfray.tune.schedulers import read_decisions

BAD_LR = 1e-7


def in_process_job(tmp_path: Path, data_files: dict[str, Path], sweep: dict[str, Any], **sections: Any) -> JobConfig:
    """test_sweep's tiny sweep job, its trials in process unless ``sweep`` says otherwise."""
    return sweep_job(tmp_path, data_files, {"trial_in_process": "always", **sweep}, **sections)


def _log(trials_dir: Path, run: str) -> list[dict[str, Any]]:
    text = (trials_dir / run / "hfray_metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow  # 76 s alone at load ~10; the default suite's ASHA sweep (test_sweep.py) runs this path (auto)
@pytest.mark.usefixtures("ray_cluster")
def test_in_process_trials_train_store_checkpoints_export_the_best_and_asha_stops_one(tmp_path, data_files):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.tune.driver import run_sweep

    job = in_process_job(
        tmp_path,
        data_files,
        {
            "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3, BAD_LR]}},
            "search": "grid",
            "num_samples": 1,
            "scheduler": {"type": "asha", "reduction_factor": 2, "grace_period": 12},
        },
        training={"per_device_train_batch_size": 32, "max_steps": 30},
    )
    summary = run_sweep(job)
    trials_dir = Path(summary.sweep_dir, "trials")
    trials = {t["params"]["training.learning_rate"]: t for t in summary.trials}

    # Trained in the Tune trial's own process: rank 0's pid in every report is the pid Tune recorded for the trial.
    pids = trial_pids(summary.sweep_dir)
    for trial in trials.values():
        worker_pids = {r["worker_pid"] for r in _log(trials_dir, trial["runs"][-1])}
        assert worker_pids == pids[trial["trial_id"]], (worker_pids, pids)
    # ... and learned: the good trials' loss fell; the better one finished with its artifact. (The other may reach
    # ASHA's rung at step 12 after the better one recorded 1.0 there, and be stopped: the two run at once and race,
    # and a trial of this tiny model trains its 30 steps in well under a second.)
    assert trials[8e-3]["stop_reason"] == "completed", trials[8e-3]
    for lr in (8e-3, 5e-3):
        log = _log(trials_dir, trials[lr]["runs"][-1])
        losses = [r["train_loss"] for r in log if "train_loss" in r]
        assert losses[-1] < losses[0] and not trials[lr]["stop_reason"].startswith("error"), (trials[lr], losses)
        # checkpoints went to the run's storage, retention kept at most num_to_keep (+ the latest) of them
        stored = [r["checkpoint_path"] for r in log if r.get("checkpoint_path")]
        kept = sorted(p.name for p in (trials_dir / trials[lr]["runs"][-1]).glob("checkpoint_step_*"))
        assert stored and 1 <= len(kept) <= 3 and Path(stored[-1]).name in kept, (stored, kept)

    # ASHA stopped the bad learning rate, and its run stopped: no more steps, no artifact.
    bad = trials[BAD_LR]
    stops = read_decisions(f"{summary.sweep_dir}/{SCHEDULER_LOG}")
    assert any(d["action"] == "stop" and d["trial_id"] == bad["trial_id"] for d in stops), stops
    assert bad["stop_reason"].startswith("stopped early by asha"), bad
    assert max(r["step"] for r in _log(trials_dir, bad["runs"][-1])) < 30
    assert not (trials_dir / bad["runs"][-1] / "artifact").exists()

    # The best (from storage) is exported and predicts.
    assert summary.best is not None and summary.best["params"]["training.learning_rate"] != BAD_LR
    assert summary.best["best_value"] >= 0.9
    manifest = read_manifest(summary.artifact)
    check_manifest(manifest)
    assert manifest["sweep"]["trial_id"] == summary.best["trial_id"]
    preds = load_artifact_pipeline(summary.artifact)(["wonderful superb film", "awful dreadful plot"])
    assert [p["label"] for p in preds] == ["pos", "neg"]


def test_always_in_process_refuses_what_cannot_train_in_process(tmp_path, data_files):
    from hfray.tune.driver import in_process_trials

    grid = {"parameters": {"training.learning_rate": {"type": "grid", "values": [1e-3]}}, "search": "grid"}
    two = in_process_job(tmp_path, data_files, grid, resources={"num_workers": 2, "cpus_per_worker": 0.9})
    with pytest.raises(ConfigError, match="sweep.trial_in_process.*num_workers is 2"):
        in_process_trials(two)
    pbt = in_process_job(tmp_path, data_files, {**grid, "search": "random", "scheduler": {"type": "pbt"}})
    with pytest.raises(ConfigError, match="pbt scheduler restores checkpoints"):
        in_process_trials(pbt)
    auto = in_process_job(tmp_path, data_files, {**grid, "trial_in_process": "auto", "scheduler": {"type": "pbt"}})
    assert in_process_trials(auto) is False
    assert in_process_trials(in_process_job(tmp_path, data_files, {**grid, "trial_in_process": "auto"})) is True
    with pytest.raises(Exception, match="trial_in_process"):
        in_process_job(tmp_path, data_files, {**grid, "trial_in_process": "sometimes"})


def test_an_in_process_checkpoint_left_to_the_run_is_moved_into_local_storage_and_a_kept_one_copied(tmp_path):
    import ray.train

    from hfray.train.local import InProcessFnUtils

    def stage(name: str) -> tuple[Any, int]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(name.encode() * 1000)
        return ray.train.Checkpoint.from_directory(str(folder)), (folder / "model.safetensors").stat().st_ino

    best = ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="eval_accuracy")
    utils = InProcessFnUtils(ray.train.RunConfig(name="run", checkpoint_config=best), str(tmp_path / "run"), [], 0.0)
    modes = ray.train.CheckpointUploadMode
    # ASYNC (storage.async_upload): the stage is the run's to drop, so it is renamed into storage: same file, no copy
    moved, inode = stage("stage1")
    utils.report({"step": 1, "eval_accuracy": 0.5}, moved, "checkpoint_step_00000001", modes.ASYNC)
    stored = tmp_path / "run" / "checkpoint_step_00000001" / "model.safetensors"
    assert stored.stat().st_ino == inode and not Path(moved.path).exists()
    # SYNC: the caller keeps its folder (and removes it itself), so storage gets a copy
    kept, inode = stage("stage2")
    utils.report({"step": 2, "eval_accuracy": 0.6}, kept, "checkpoint_step_00000002", modes.SYNC)
    copied = tmp_path / "run" / "checkpoint_step_00000002" / "model.safetensors"
    assert copied.read_bytes() == b"stage2" * 1000 and copied.stat().st_ino != inode and Path(kept.path).exists()
    assert [Path(c.path).name for _, c in utils.kept] == ["checkpoint_step_00000001", "checkpoint_step_00000002"]
