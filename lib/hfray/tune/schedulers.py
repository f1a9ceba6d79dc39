"""Tune schedulers and search algorithms from the ``sweep:`` section, with a decision log.

Each scheduler is Ray's own class with one addition: decisions that end or transform a trial (ASHA
stopping it, PBT cloning a better trial into it) are appended to ``<sweep>/hfray_scheduler_decisions.jsonl`` as
they happen (by the sweep's driver, where Tune runs the scheduler), so the sweep report can say why each
trial stopped and tests can assert what the scheduler did. The classes live at module level
because Tune pickles the scheduler into the experiment state for ``--resume``.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.schedulers.pb2 import PB2

from hfray.config.sweep import SweepConfig
from hfray.storage import fs
from hfray.tune.plan import split_sizes
from hfray.tune.space import tune_domain

if TYPE_CHECKING:
    from hfray.tune.plan import SweepPlan

TIME_ATTR = "step"  # HF optimizer steps: one meaning for every scheduler, and PBT continues the donor's count


def log_decision(uri: str, record: dict[str, Any]) -> None:
    """Append one JSON line (read-modify-write: the file is small and only the Tune driver writes it)."""
    previous = fs.read_text(uri) if fs.exists(uri) else ""
    fs.write_text(uri, previous + json.dumps({**record, "time": time.time()}, sort_keys=True) + "\n")


def read_decisions(uri: str) -> list[dict[str, Any]]:
    if not fs.exists(uri):
        return []
    return [json.loads(line) for line in fs.read_text(uri).splitlines() if line.strip()]


class _StopLog:
    """Records early stops; a trial that finished its own steps is not 'stopped'.

    ``no_skill`` (``sweep.scheduler.stop_no_skill``, :func:`hfray.tune.holdout.no_skill`): from ``grace`` steps on, a
    trial whose ``metric`` is within ``tolerance`` of it (it predicts one label) is stopped too. Ray's ASHA compares a
    trial at a rung only with those recorded there before it, so the first to reach a rung goes on whatever it scores
    (bench/results/sweep_cpu_holdout_v3.md: a trial at the majority class ran all 188 steps).
    """

    decisions_uri: str = ""
    kind: str = ""
    no_skill: float | None = None
    tolerance: float = 0.0
    grace: int = 0
    watched: str = ""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        reason = None
        if decision == TrialScheduler.CONTINUE and self._learned_nothing(result):
            decision, reason = TrialScheduler.STOP, f"no better than predicting one label ({self.no_skill:.4f})"
        if decision == TrialScheduler.STOP and result.get(TIME_ATTR, 0) >= result.get("max_steps", math.inf):
            # Its last evaluation fell on a rung: it ends on its own and exports its artifact (still ranked).
            return TrialScheduler.CONTINUE
        if decision == TrialScheduler.STOP and self.decisions_uri:
            record = {
                "action": "stop",
                "scheduler": self.kind,
                "trial_id": trial.trial_id,
                "step": result.get(TIME_ATTR),
                "metric": {k: v for k, v in result.items() if k.startswith("eval_")},
            }
            log_decision(self.decisions_uri, {**record, "reason": reason} if reason else record)
        return decision

    def _learned_nothing(self, result: dict[str, Any]) -> bool:
        value = result.get(self.watched)
        if self.no_skill is None or not isinstance(value, (int, float)) or result.get(TIME_ATTR, 0) < self.grace:
            return False
        return value <= self.no_skill + self.tolerance


class _ExploitLog:
    decisions_uri: str = ""
    kind: str = ""

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        before = dict(trial.config)
        donor_step = self._trial_state[trial_to_clone].last_result.get(TIME_ATTR)  # type: ignore[attr-defined]
        super()._exploit(tune_controller, trial, trial_to_clone)  # type: ignore[misc]
        log_decision(
            self.decisions_uri,
            {
                "action": "exploit",
                "scheduler": self.kind,
                "trial_id": trial.trial_id,
                "donor": trial_to_clone.trial_id,
                "donor_step": donor_step,
                "donor_config": dict(trial_to_clone.config),
                "old_config": before,
                "new_config": dict(trial.config),
            },
        )


class HfrayASHA(_StopLog, AsyncHyperBandScheduler):
    kind = "asha"


class HfrayHyperBand(_StopLog, HyperBandScheduler):
    kind = "hyperband"


class HfrayMedianStopping(_StopLog, MedianStoppingRule):
    kind = "median"


class HfrayPBT(_ExploitLog, PopulationBasedTraining):
    kind = "pbt"


class HfrayPB2(_ExploitLog, PB2):
    kind = "pb2"


def _mutations(sweep: SweepConfig) -> dict[str, Any]:
    return {
        k: (p.values if p.type == "choice" else tune_domain(p)) for k, p in sweep.parameters.items() if p.type != "grid"
    }


def build_scheduler(sweep: SweepConfig, plan: SweepPlan) -> TrialScheduler:
    s = sweep.scheduler
    grace, max_t, interval = plan.grace_period, plan.max_t, plan.perturbation_interval
    if s.type == "fifo":
        return FIFOScheduler()
    if s.type == "asha":
        # stop_last_trials=False: a trial that reaches max_t ends on its own and exports its artifact.
        sched: Any = HfrayASHA(
            TIME_ATTR,
            max_t=max_t,
            grace_period=grace,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
            stop_last_trials=False,
        )
    elif s.type == "hyperband":
        sched = HfrayHyperBand(TIME_ATTR, max_t=max_t, reduction_factor=s.reduction_factor, stop_last_trials=False)
    elif s.type == "median":
        sched = HfrayMedianStopping(TIME_ATTR, grace_period=grace, min_samples_required=s.min_samples_required)
    elif s.type == "pbt":
        sched = HfrayPBT(
            TIME_ATTR,
            perturbation_interval=interval,
            hyperparam_mutations=_mutations(sweep),
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            perturbation_factors=s.perturbation_factors,
        )
    else:
        bounds = {k: [p.low, p.high] for k, p in sweep.parameters.items()}  # type: ignore[union-attr]
        sched = HfrayPB2(
            TIME_ATTR,
            perturbation_interval=interval,
            hyperparam_bounds=bounds,
            quantile_fraction=s.quantile_fraction,
        )
    sched.decisions_uri = plan.scheduler_log
    if plan.no_skill is not None:  # set by the sweep's driver for asha/median with stop_no_skill only
        n = split_sizes(plan.prepared).get("validation", 0)
        sched.no_skill, sched.grace, sched.watched = plan.no_skill, grace, plan.metric
        sched.tolerance = 0.5 / n if n else 0.0  # half a row: a score equal to the constant prediction's
    return sched


def build_search_alg(sweep: SweepConfig, metric: str, mode: str, max_concurrent: int) -> Any:
    """Tune ignores ``TuneConfig.max_concurrent_trials`` for BasicVariantGenerator: pass it here too."""
    from ray.tune.search import BasicVariantGenerator

    if sweep.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(
            sampler=TPESampler(seed=sweep.seed),
            points_to_evaluate=sweep.initial_points or None,
            metric=metric,
            mode=mode,
        )
    return BasicVariantGenerator(
        points_to_evaluate=sweep.initial_points or None, random_state=sweep.seed, max_concurrent=max_concurrent
    )
