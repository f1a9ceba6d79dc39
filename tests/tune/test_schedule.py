"""Scheduler defaults: no trial is judged before its warmup ends, and rungs fall on evaluations.

The Ray test budgets 2 CPUs like tests/tune/test_sweep.py: 0.9-CPU workers plus 0.1-CPU trial drivers, two
trials at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_job
from hfray.config import JobConfig
from hfray.tune.holdout import no_skill
from hfray.tune.plan import on_eval, scheduler_steps
from hfray.tune.space import check_space


def _job(tmp_path: Path, data_files: dict[str, Path], training: dict[str, Any], scheduler: dict[str, Any]) -> JobConfig:
    raw = tiny_job(
        tmp_path,
        data_files,
        resources={"num_workers": 1, "cpus_per_worker": 0.9},
        training={"per_device_train_batch_size": 32, "eval_strategy": "steps", "eval_steps": 6, **training},
    )
    raw["sweep"] = {
        "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-2}},
        "scheduler": scheduler,
        "trial_driver_cpus": 0.1,
        "max_concurrent_trials": 2,
        "max_failures": 0,
    }
    return JobConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("max_steps", "warmup", "eval_steps", "expected"),
    [
        (200, 0.5, 6, 102),  # warmup 100 steps dominates; rounded up to the 17th evaluation
        (200, 10, 6, 54),  # a quarter of max_t (50) dominates; on an evaluation
        (30, 0.0, 6, 12),
        (12, 0.0, 6, 6),  # at least one evaluation
    ],
)
def test_default_grace_period_covers_warmup_and_a_quarter_of_max_t(
    tmp_path, data_files, max_steps, warmup, eval_steps, expected
):
    job = _job(tmp_path, data_files, {"max_steps": max_steps, "warmup_steps": warmup, "eval_steps": eval_steps}, {})
    warm = int(warmup) if warmup >= 1 else int(warmup * max_steps)
    steps, notes = scheduler_steps(job, eval_steps, max_steps, warm)
    assert steps["grace_period"] == expected and not notes
    assert steps["grace_period"] >= warm and steps["grace_period"] % eval_steps == 0
    assert steps["max_t"] >= steps["grace_period"]


def test_given_scheduler_times_move_to_the_next_evaluation(tmp_path, data_files):
    job = _job(tmp_path, data_files, {"max_steps": 60}, {"grace_period": 10, "perturbation_interval": 12})
    steps, notes = scheduler_steps(job, 6, 60, 0)
    assert steps["grace_period"] == 12 and steps["perturbation_interval"] == 12
    assert notes == ["sweep.scheduler.grace_period 10 moved to 12, the next evaluation"]
    assert on_eval(1, 6) == 6 and on_eval(7, 6) == 12


def test_the_longest_warmup_in_the_space_sets_the_grace_period(tmp_path, data_files):
    from hfray.tune.driver import prepare_sweep

    raw = _job(tmp_path, data_files, {"max_steps": 120, "warmup_steps": 0.0}, {}).to_dict()
    raw["sweep"]["parameters"]["training.warmup_steps"] = {"type": "uniform", "low": 0.0, "high": 0.6}
    job, plan = prepare_sweep(JobConfig.from_dict(raw))
    assert len(check_space(job)) == 4
    assert plan.warmup_steps == 72 and plan.grace_period == 72  # 0.6 * 120 steps, on the 12th evaluation


def _steps_reached(sweep_dir: str, run: str) -> int:
    log = Path(sweep_dir, "trials", run, "hfray_metrics.jsonl").read_text().splitlines()
    return max(json.loads(line)["step"] for line in log if line.strip())


def test_a_trial_that_learned_nothing_stops_even_as_the_first_at_its_rung(tmp_path, data_files):
    """Ray's ASHA promotes the first trial to reach a rung whatever it scores (no rival recorded there yet): in
    bench/results/sweep_cpu_holdout_v3.md a trial stuck at the majority class ran its full 188 steps that way."""
    from types import SimpleNamespace

    import datasets
    from ray.tune.schedulers import TrialScheduler

    from hfray.tune.plan import make_plan
    from hfray.tune.schedulers import build_scheduler

    labels = ["neg", "pos"]
    splits = {
        "train": datasets.Dataset.from_dict({"label": ["pos"] * 6 + ["neg"] * 4}),
        "validation": datasets.Dataset.from_dict({"label": ["pos"] * 7 + ["neg"] * 3}),
    }
    prepared = SimpleNamespace(splits=splits, labels=labels, sizes={"train": 10, "validation": 10})
    job = _job(tmp_path, data_files, {"max_steps": 24}, {"type": "asha", "grace_period": 12})
    # what always predicting the training split's majority label ('pos') scores on validation
    assert no_skill(job, prepared, "eval_accuracy") == pytest.approx(0.7)
    assert no_skill(job, prepared, "eval_f1_macro") == pytest.approx(0.5 * 2 * 0.7 / 1.7)
    assert no_skill(job, prepared, "eval_loss") is None

    def first_at_the_rung(no_skill_value: float | None, accuracy: float) -> str:
        plan = make_plan(job, prepared, "sweep", [])
        plan.no_skill = no_skill_value
        scheduler = build_scheduler(job.sweep, plan)  # type: ignore[arg-type]
        scheduler.set_search_properties("eval_accuracy", "max")  # as Tune does from its TuneConfig
        trial = SimpleNamespace(trial_id="t0", config={})
        scheduler.on_trial_add(None, trial)
        result = {"step": 12, "max_steps": 24, "eval_accuracy": accuracy}
        return scheduler.on_trial_result(None, trial, result)

    assert first_at_the_rung(None, 0.7) == TrialScheduler.CONTINUE  # Ray's ASHA alone: no rival, promoted
    assert first_at_the_rung(0.7, 0.7) == TrialScheduler.STOP
    assert first_at_the_rung(0.7, 0.8) == TrialScheduler.CONTINUE


@pytest.mark.slow  # ~1.5 min alone on 2 loaded cores; the default suite checks warmup in test_sweep.py's ASHA test
@pytest.mark.usefixtures("ray_cluster")
def test_asha_never_stops_a_trial_before_its_warmup_ends(tmp_path, data_files):
    """Warmup is half of training: ASHA's first rung is the end of warmup (12), not the first evaluation (6).

    One trial at a time, so the good trial records the rungs first: the trial that cannot learn is stopped at
    step 12, never before; a trial whose last step falls on that rung (max_steps 12) ends on its own and exports
    its artifact instead of being marked stopped.
    """
    from hfray.tune.driver import run_sweep

    raw = _job(tmp_path, data_files, {"max_steps": 24, "warmup_steps": 0.5}, {"type": "asha"}).to_dict()
    good, bad = 8e-3, 1e-7
    points = [(good, 24), (bad, 24), (bad, 12)]
    raw["sweep"].update(
        num_samples=3,
        max_concurrent_trials=1,
        parameters={
            "training.learning_rate": {"type": "choice", "values": [good, bad]},
            "training.max_steps": {"type": "choice", "values": [24, 12]},
        },
        initial_points=[{"training.learning_rate": lr, "training.max_steps": n} for lr, n in points],
    )
    summary = run_sweep(JobConfig.from_dict(raw))

    trials = {(t["params"]["training.learning_rate"], t["params"]["training.max_steps"]): t for t in summary.trials}
    assert sorted(trials) == sorted(points)
    reached = {key: _steps_reached(summary.sweep_dir, t["runs"][-1]) for key, t in trials.items()}
    # The bad 24-step trial: stopped, at the end of its warmup (12 steps), not at the first evaluation (6).
    assert trials[(bad, 24)]["stop_reason"].startswith("stopped early by asha at step 12"), trials[(bad, 24)]
    assert reached[(bad, 24)] == 12
    assert reached[(good, 24)] == 24 and trials[(good, 24)]["stop_reason"] == "completed"
    # Its last step is ASHA's first rung, below the cutoff: it completes and exports its own artifact.
    short = trials[(bad, 12)]
    assert short["stop_reason"] == "completed" and reached[(bad, 12)] == 12, short
    assert Path(summary.sweep_dir, "trials", short["runs"][-1], "artifact", "hfray_manifest.json").exists()
    assert "no trial judged before step 12" in Path(summary.sweep_dir, "sweep_report.md").read_text()


def test_a_short_accumulation_window_is_a_step_in_the_sweeps_plan(tmp_path, data_files):
    """256 rows in batches of 32: 8 batches an epoch, in windows of 3 (3, 3, 2): 3 optimizer steps an epoch, as the
    Trainer takes them (tests/config/test_steps.py), not 2; evaluations at each epoch's end."""
    from hfray.tune.driver import prepare_sweep

    training = {"max_steps": -1, "num_train_epochs": 2, "gradient_accumulation_steps": 3, "eval_strategy": "epoch"}
    _, plan = prepare_sweep(_job(tmp_path, data_files, training, {}))
    assert plan.eval_interval == 3 and plan.max_steps == 6 and plan.max_t == 6
