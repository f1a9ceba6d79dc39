"""Sweeps on a real local Ray cluster: ASHA stops a bad trial, the best checkpoint is exported and loads.

Budget on 2 CPUs: each trial is one 0.9-CPU worker plus a 0.1-CPU trial driver, so two trials run at
once (a 1-CPU driver plus 1-CPU workers would leave no room for a second trial's workers).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_BERT, check_manifest, tiny_job
from hfray.artifacts.manifest import read_manifest
from hfray.config import JobConfig
from hfray.tune.plan import SCHEDULER_LOG
from hfray.tune.schedulers import read_decisions

BAD_LR = 1e-7


def sweep_job(tmp_path: Path, data_files: dict[str, Path], sweep: dict[str, Any], **sections: Any) -> JobConfig:
    defaults: dict[str, Any] = {
        "resources": {"num_workers": 1, "cpus_per_worker": 0.9},
        "storage": {"num_to_keep": 2, "max_failures": 0},
        "training": {"per_device_train_batch_size": 32, "max_steps": 30},
    }
    raw = tiny_job(tmp_path, data_files, **{**defaults, **sections})
    raw["sweep"] = {"trial_driver_cpus": 0.1, "max_concurrent_trials": 2, "max_failures": 0, **sweep}
    return JobConfig.from_dict(raw)


def two_trial_grid(**sweep: Any) -> dict[str, Any]:
    """Two learning rates that both learn, every trial run to the end (no early stopping)."""
    grid = {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3]}}
    return {"parameters": grid, "search": "grid", "num_samples": 1, "scheduler": {"type": "fifo"}, **sweep}


@pytest.mark.usefixtures("ray_cluster")
def test_asha_stops_the_bad_learning_rate_and_exports_the_best(tmp_path, data_files):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.tune.driver import run_sweep

    # Grid order is the start order: the two good trials reach the first rung before the bad one.
    job = sweep_job(
        tmp_path,
        data_files,
        {
            "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, 5e-3, BAD_LR, 3e-3]}},
            "search": "grid",
            "num_samples": 1,
            "scheduler": {"type": "asha", "reduction_factor": 2},
        },
        training={"per_device_train_batch_size": 32, "max_steps": 30, "warmup_steps": 0.4},
    )
    summary = run_sweep(job)

    trials = {t["trial_id"]: t for t in summary.trials}
    assert len(trials) == 4
    bad = next(t for t in trials.values() if t["params"]["training.learning_rate"] == BAD_LR)
    stops = [d for d in read_decisions(f"{summary.sweep_dir}/{SCHEDULER_LOG}")]
    assert any(d["action"] == "stop" and d["trial_id"] == bad["trial_id"] for d in stops), stops
    assert bad["stop_reason"].startswith("stopped early by asha"), bad
    assert bad["steps_run"] < 30
    # Not judged before its warmup ended (0.4 x 30 = 12 steps): the default grace period, not one evaluation (6).
    assert max(r["step"] for r in _metrics_log(summary.sweep_dir, bad["runs"][-1])) >= 12
    assert all(d["step"] >= 12 for d in stops if d["action"] == "stop"), stops
    assert summary.best is not None and summary.best["params"]["training.learning_rate"] != BAD_LR
    assert any(t["stop_reason"] == "completed" for t in trials.values()), trials
    assert summary.best["best_value"] >= 0.9  # eval_accuracy of the exported checkpoint
    # sweep.reuse_actors: later trials ran in the processes of finished ones (Tune's own result files say where)
    assert len(set().union(*trial_pids(summary.sweep_dir).values())) < 4
    # No trial, stopped or finished, left HF's checkpoint folders on the node: storage holds what is kept.
    from hfray.train.launch import local_root

    for trial in trials.values():
        for run in trial["runs"]:
            local = Path(local_root(os.path.join(summary.sweep_dir, "trials"), run))
            assert not local.exists() or all(p.name.startswith("stage-") for p in local.iterdir()), list(
                local.iterdir()
            )

    # The exported best model is a slim artifact that predicts.
    manifest = read_manifest(summary.artifact)
    check_manifest(manifest)
    assert manifest["sweep"]["trial_id"] == summary.best["trial_id"]
    assert not os.path.exists(os.path.join(summary.artifact, "optimizer.pt"))
    pipe = load_artifact_pipeline(summary.artifact)
    preds = pipe(["wonderful superb film", "awful dreadful plot"])
    assert [p["label"] for p in preds] == ["pos", "neg"]

    # Report: one CSV row per trial, Markdown, a PNG, and TensorBoard event files under the sweep.
    with open(os.path.join(summary.sweep_dir, "sweep_report.csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "stopped early by asha" in Path(summary.sweep_dir, "sweep_report.md").read_text()
    assert Path(summary.sweep_dir, "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert glob.glob(os.path.join(summary.sweep_dir, "trial_*", "events.out.tfevents*"))
    assert json.loads(Path(summary.sweep_dir, "hfray_sweep.json").read_text())["best_trial"] == summary.best["trial_id"]

    # `hfray serve SWEEP_DIR` serves the best as 'best' (the default) and every trial that exported one.
    from hfray.serving.catalog import ArtifactCatalog

    catalog = ArtifactCatalog(summary.sweep_dir)
    completed = sorted(p.parent.name for p in Path(summary.sweep_dir, "trials").glob("*/artifact"))
    assert set(completed) >= {t["trial_id"] for t in trials.values() if t["stop_reason"] == "completed"}
    assert catalog.ids() == ["best", *completed] and catalog.default_id(None) == "best"
    assert catalog.resolve("best").manifest["sweep"]["trial_id"] == summary.best["trial_id"]

    # Re-running the finished sweep trains nothing.
    again = run_sweep(job)
    assert again.reused and again.artifact == summary.artifact


def trial_pids(sweep_dir: str) -> dict[str, set[int]]:
    """The process each trial's function ran in, from Ray Tune's own result files (its ``pid`` key)."""
    pids = {}
    for path in Path(sweep_dir).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        pids[path.parent.name.removeprefix("trial_")] = {r["pid"] for r in rows}
    return pids


@pytest.mark.slow  # ~2 min on 2 loaded cores: three trials one after another
@pytest.mark.usefixtures("ray_cluster")
def test_a_stopped_trial_ends_its_run_and_its_process_runs_the_next_trial(tmp_path, data_files):
    """sweep.reuse_actors: ASHA stops the bad trial, whose process then runs the last trial; the stopped trial's
    Train run does not train on in the background (its own metrics log ends early) and nothing errors."""
    from hfray.tune.driver import run_sweep

    job = sweep_job(
        tmp_path,
        data_files,
        {
            "parameters": {"training.learning_rate": {"type": "grid", "values": [8e-3, BAD_LR, 5e-3]}},
            "search": "grid",
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "scheduler": {"type": "asha", "reduction_factor": 2, "grace_period": 12},
        },
        training={"per_device_train_batch_size": 32, "max_steps": 120, "eval_steps": 6},
    )
    summary = run_sweep(job)

    trials = {t["params"]["training.learning_rate"]: t for t in summary.trials}
    bad, last = trials[BAD_LR], trials[5e-3]
    assert bad["stop_reason"].startswith("stopped early by asha"), bad
    assert trials[8e-3]["stop_reason"] == "completed", summary.trials
    # the last trial ran in the reused process and was judged like any other (ASHA may stop it too), no error
    assert last["steps_run"] >= 12 and not last["stop_reason"].startswith(("error", "not finished")), last
    assert max(r["step"] for r in _metrics_log(summary.sweep_dir, bad["runs"][-1])) < 120
    pids = trial_pids(summary.sweep_dir)
    assert pids[last["trial_id"]] == pids[bad["trial_id"]], pids  # the stopped trial's process ran the last one


def _metrics_log(sweep_dir: str, run: str) -> list[dict[str, Any]]:
    path = Path(sweep_dir, "trials", run, "hfray_metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # CI budget: ~2.5 min on 2 cores (ASHA and resume keep Train-in-Tune in the default suite)
@pytest.mark.usefixtures("ray_cluster")
def test_pbt_exploit_copies_the_winner_and_applies_the_mutated_learning_rate(tmp_path, data_files):
    from hfray.tune.driver import run_sweep

    good, bad = 8e-3, BAD_LR
    job = sweep_job(
        tmp_path,
        data_files,
        {
            "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-7, "high": 2e-2}},
            "initial_points": [{"training.learning_rate": good}, {"training.learning_rate": bad}],
            "num_samples": 2,
            "metric": "eval_loss",
            "scheduler": {
                "type": "pbt",
                "perturbation_interval": 12,
                "quantile_fraction": 0.5,
                "resample_probability": 0.0,
            },
        },
        # constant schedule: the learning rate HF logs is the configured one, so a mutation is visible
        training={"per_device_train_batch_size": 32, "max_steps": 30, "lr_scheduler_type": "constant"},
    )
    summary = run_sweep(job)

    decisions = read_decisions(f"{summary.sweep_dir}/{SCHEDULER_LOG}")
    exploits = [d for d in decisions if d["action"] == "exploit"]
    trials = {t["trial_id"]: t for t in summary.trials}
    first = exploits[0]
    assert first["old_config"]["training.learning_rate"] == pytest.approx(bad), exploits
    assert first["donor_config"]["training.learning_rate"] == pytest.approx(good)
    new_lr = first["new_config"]["training.learning_rate"]
    assert new_lr in (pytest.approx(good * 1.2), pytest.approx(good * 0.8))

    # The exploited trial's next Train run started from the donor's checkpoint with the new rate:
    # HF restores the donor's optimizer state (lr = good), hfray must not let that win.
    recipient = trials[first["trial_id"]]
    assert len(recipient["runs"]) >= 2, recipient
    after = _metrics_log(summary.sweep_dir, recipient["runs"][1])
    assert after[0]["hfray_resumed_from_step"] == first["donor_step"]
    assert after[0]["step"] > first["donor_step"]
    assert after[0]["learning_rate"] == pytest.approx(new_lr, rel=1e-6)
    assert "took over" in recipient["stop_reason"]
    # It now learns: the copied checkpoint and the new rate beat what the bad rate reached.
    before = _metrics_log(summary.sweep_dir, recipient["runs"][0])
    assert min(r["eval_loss"] for r in after) < min(r["eval_loss"] for r in before)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)  # a glob of the trial folders: cheap; a 1 s nap delayed each wait by ~0.5 s
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _unfinished_with_checkpoint(trials_dir: Path) -> bool:
    return any(any(run.glob("checkpoint_step_*")) and not (run / "artifact").exists() for run in trials_dir.iterdir())


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, data_files, ray_cluster):
    """Ctrl-C (SIGINT) a running `hfray sweep`, then `--resume`: the finished trial is not trained again."""
    import signal
    import subprocess
    import sys

    import yaml

    from hfray.tune.driver import run_sweep
    from hfray.tune.plan import sweep_name

    job = sweep_job(
        tmp_path,
        data_files,
        # Trial 1 only has to finish; trial 2 needs enough steps after its first checkpoint that it cannot finish
        # before the interrupt lands: with fs uploaded in the background (storage.async_upload) 30 steps could.
        two_trial_grid(
            max_concurrent_trials=1, parameters={"training.max_steps": {"type": "grid", "values": [24, 90]}}
        ),
        training={"per_device_train_batch_size": 32, "max_steps": 90},
    )
    job_file = tmp_path / "sweep.yaml"
    job_file.write_text(yaml.safe_dump(job.to_dict()))
    trials_dir = Path(job.storage.path) / sweep_name(job) / "trials"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hfray", "sweep", str(job_file)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            _wait_for(lambda: len(list(trials_dir.glob("*/artifact/hfray_manifest.json"))) == 1, 300, "trial 1")
            _wait_for(lambda: _unfinished_with_checkpoint(trials_dir), 300, "trial 2's first checkpoint")
        finally:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=180)
    assert rc == 130, (tmp_path / "sweep.log").read_text()[-3000:]
    done_run = next(trials_dir.glob("*/artifact/hfray_manifest.json")).parent.parent
    log_before = (done_run / "hfray_metrics.jsonl").read_bytes()
    manifest_mtime = (done_run / "artifact" / "hfray_manifest.json").stat().st_mtime
    interrupted = [p for p in trials_dir.iterdir() if p != done_run and not p.name.startswith(".")]  # .hfray_cache
    assert len(interrupted) == 1 and not (interrupted[0] / "artifact").exists()

    summary = run_sweep(job, resume=True)

    assert [t["stop_reason"] for t in summary.trials] == ["completed", "completed"]
    assert (done_run / "hfray_metrics.jsonl").read_bytes() == log_before  # not trained again
    assert (done_run / "artifact" / "hfray_manifest.json").stat().st_mtime == manifest_mtime
    log = _metrics_log(str(trials_dir.parent), interrupted[0].name)
    resumed = [r for r in log if r["hfray_resumed_from_step"] > 0]
    start = resumed[0]["hfray_resumed_from_step"] if resumed else 0
    # Continued from its checkpoint: the resumed run's first evaluation is the next one (every 6 steps), not step 6.
    assert start > 0 and resumed[0]["step"] == start + 6, [(r["step"], r["hfray_resumed_from_step"]) for r in log]
    assert read_manifest(summary.artifact)["sweep"]["name"] == sweep_name(job)


def _word_tokenizer(path: Path) -> str:
    """A tokenizer over the synthetic data's words, built here: the GPU machine has no pip-shipped models."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from conftest import NEGATIVE, NEUTRAL, POSITIVE

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    specials = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", **specials).save_pretrained(str(path))
    return str(path)


@pytest.mark.gpu
def test_fractional_gpu_trials_share_one_gpu(tmp_path, data_files):
    """gpus_per_worker 0.5: two trials train at the same time on one GPU."""
    import ray

    from hfray.tune.driver import run_sweep

    ray.shutdown()  # a connection an earlier test left (its cluster may lack the GPU or CPUs): hfray starts its own
    try:
        job = sweep_job(
            tmp_path,
            data_files,
            two_trial_grid(max_concurrent_trials=None),
            model={"architecture": dict(TINY_BERT), "tokenizer": _word_tokenizer(tmp_path / "tok")},
            cluster={"num_cpus": 4, "num_gpus": 1},  # a local cluster with the GPU (started by hfray)
            resources={"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.5},
            training={"per_device_train_batch_size": 32, "max_steps": 60},
        )
        summary = run_sweep(job)
    finally:
        ray.shutdown()
    logs = [_metrics_log(summary.sweep_dir, t["runs"][0]) for t in summary.trials]
    assert all(r["on_gpu"] == 1 for log in logs for r in log)
    (a0, a1), (b0, b1) = [(log[0]["time"], log[-1]["time"]) for log in logs]
    assert a0 < b1 and b0 < a1, "the two trials' reports should overlap in time"
    assert summary.best is not None and summary.best["best_value"] >= 0.9


@pytest.mark.usefixtures("ray_cluster")
def test_a_sweep_refuses_a_connected_cluster_smaller_than_its_cluster_section(tmp_path, data_files):
    """The sweep above asks for a 4-CPU, 1-GPU local cluster; a process already connected to the 2-CPU test cluster
    must say so, not run its trials there one at a time."""
    import ray

    from hfray.errors import ResourceError
    from hfray.tune.driver import run_sweep

    job = sweep_job(tmp_path, data_files, two_trial_grid(), cluster={"num_cpus": 4, "num_gpus": 1})
    with pytest.raises(ResourceError, match=r"cluster\.num_cpus is 4, .*connected to has 2; cluster\.num_gpus is 1"):
        run_sweep(job)
    assert ray.is_initialized() and not list((tmp_path / "runs").rglob("trials/*"))  # no trial started


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    ("scheduler", "search"),
    [("hyperband", "random"), ("median", "optuna"), ("pb2", "random")],
)
def test_other_schedulers_and_optuna_run_to_a_best_artifact(tmp_path, data_files, scheduler, search):
    from hfray.tune.driver import run_sweep

    job = sweep_job(
        tmp_path,
        data_files,
        {
            "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            "search": search,
            "num_samples": 3,
            "scheduler": {"type": scheduler, "min_samples_required": 2, "perturbation_interval": 12},
        },
    )
    summary = run_sweep(job)
    assert len(summary.trials) == 3
    assert not [t for t in summary.trials if t["stop_reason"].startswith("error")], summary.trials
    assert summary.artifact and read_manifest(summary.artifact)["sweep"]["trial_id"]
