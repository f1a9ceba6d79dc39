"""The ``sweep:`` section of a job file: search space, search algorithm and early-stopping scheduler.

The search space names job keys by their dotted path (``training.learning_rate``,
``model.architecture.num_hidden_layers``, ``training.extra_args.adam_beta2``). Every trial is the job
file with the sampled values written at those paths, re-validated like any job. Scheduler times
(``grace_period``, ``max_t``, ``perturbation_interval``) count optimizer steps, the ``step`` hfray
reports at every evaluation: steps mean the same thing for ASHA and PBT, and after a PBT exploit the
step continues from the donor's checkpoint. They are moved up to an evaluation; their defaults are
:func:`hfray.tune.plan.scheduler_steps`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from hfray.config.section import Section
from hfray.errors import ConfigError, Problem

# Sections a search space may touch: what changes training, not where it runs or is stored.
SEARCHABLE_SECTIONS = ("model", "data", "training", "evaluation", "peft")

# Learning rates by how the model starts: fine-tuning pretrained weights (BERT-style papers: 1e-5..1e-4),
# training a PEFT adapter (LoRA: ~1e-4..1e-3), or training a model built from a config (from scratch).
LEARNING_RATES = {"pretrained": (1e-5, 1e-4), "peft": (5e-5, 1e-3), "scratch": (1e-4, 3e-3)}
# Keys a search space may name without a range (``training.learning_rate: {}``) and what they get.
DEFAULT_RANGES: dict[str, dict[str, Any]] = {
    "training.warmup_steps": {"type": "uniform", "low": 0.0, "high": 0.2},  # a fraction of all steps
    "training.weight_decay": {"type": "choice", "values": [0.0, 0.01, 0.1]},
}


def model_family(raw: dict[str, Any]) -> str:
    if raw.get("peft"):
        return "peft"
    model = raw.get("model")
    return "scratch" if isinstance(model, dict) and model.get("architecture") else "pretrained"


def fill_default_ranges(raw: Any) -> Any:
    """A job dict whose ``sweep.parameters`` entries left empty (``{}`` or null) get the default range for the key.

    A key without a default is an error naming it.
    """
    sweep = raw.get("sweep") if isinstance(raw, dict) else None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        return raw
    lr_low, lr_high = LEARNING_RATES[model_family(raw)]
    defaults = {"training.learning_rate": {"type": "loguniform", "low": lr_low, "high": lr_high}, **DEFAULT_RANGES}
    params = {k: (defaults.get(k, v) if v in ({}, None) else v) for k, v in sweep["parameters"].items()}
    empty = [k for k, v in params.items() if v in ({}, None)]
    if empty:
        why = f"no default range for this key: give type and range ({', '.join(defaults)} have one)"
        raise ConfigError([Problem(f"sweep.parameters.{k}", why) for k in empty])
    return {**raw, "sweep": {**sweep, "parameters": params}}


class _Range(Section):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class UniformParam(_Range):
    type: Literal["uniform"]


class LogUniformParam(_Range):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> LogUniformParam:
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        return self


class RandIntParam(Section):
    type: Literal["randint"]
    low: int
    high: int = Field(description="Included: randint 1..4 can give 4.")

    @model_validator(mode="after")
    def _ordered(self) -> RandIntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ChoiceParam(Section):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class GridParam(Section):
    type: Literal["grid"]
    values: list[Any] = Field(min_length=1, description="Every value is tried (times num_samples).")


Param = Annotated[UniformParam | LogUniformParam | RandIntParam | ChoiceParam | GridParam, Field(discriminator="type")]


class SchedulerConfig(Section):
    type: Literal["asha", "hyperband", "median", "pbt", "pb2", "fifo"] = "asha"
    grace_period: int | None = Field(
        None,
        ge=1,
        description="Steps before a trial can be stopped; default: the longest warmup and at least max_t/4, "
        "on an evaluation (docs/guide.md).",
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA/HyperBand: keep 1/reduction_factor per rung.")
    max_t: int | None = Field(None, ge=1, description="Steps of the longest trial; default: from the job.")
    brackets: int = Field(1, ge=1, description="ASHA brackets.")
    min_samples_required: int = Field(3, ge=1, description="median: trials needed before stopping any.")
    perturbation_interval: int | None = Field(
        None, ge=1, description="PBT/PB2: steps; default: the longest warmup, at least 1 eval."
    )
    stop_no_skill: bool = Field(
        True,
        description="asha/median, classification metrics: from the grace period on, stop a trial that scores no "
        "better on validation than always predicting the most frequent training label (ASHA stops it at any rung "
        "that has a rival, but promotes the first trial to reach a rung whatever it scores).",
    )
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom fraction copies the top one.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: resample instead of perturb.")
    perturbation_factors: tuple[float, float] = (1.2, 0.8)


class SweepConfig(Section):
    parameters: dict[str, Param] = Field(
        description="Dotted job key -> distribution; {} for the default range of training.learning_rate "
        "(log-uniform, by model family), training.warmup_steps or training.weight_decay."
    )
    search: Literal["random", "grid", "optuna"] = Field("random", description="optuna: TPE sampler.")
    num_samples: int = Field(8, ge=1, description="Trials (random/optuna); grid: repeats of the grid.")
    initial_points: list[dict[str, Any]] = Field(
        default_factory=list, description="Configs tried first, e.g. [{training.learning_rate: 3e-5}]."
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    metric: str | None = Field(None, description="Default: 'eval_' + evaluation.metric_for_best_model.")
    mode: Literal["max", "min"] | None = Field(None, description="Default: from evaluation.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Default: as many as the cluster fits.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop all trials after this many seconds.")
    trial_driver_cpus: float = Field(0.1, gt=0, description="CPU reserved per trial for its Train controller.")
    max_failures: int = Field(1, ge=0, description="Restarts of a failed trial (each resumes its checkpoint).")
    seed: int = 0
    reuse_actors: bool = Field(
        True,
        description="Run the next trial in a finished trial's process (Ray Tune's reuse_actors): one process "
        "boot and import fewer per trial; false: a fresh process per trial. Not with pbt, pb2 or hyperband.",
    )
    trial_in_process: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Train a one-worker trial in its Tune trial process (Ray Train's local mode, no Train controller "
        "or worker processes: hfray.train.local). auto: when resources.num_workers is 1, the scheduler is not "
        "pbt, pb2 or hyperband and the task streams no Ray Data; always: the same, an error otherwise; never: a "
        "Ray Train run per trial.",
    )
    refit: bool = Field(
        False,
        description="Train the best configuration again on train + validation for the full budget and export "
        "that model as the sweep's artifact (its test metrics in the report when data.test is set). A split carved "
        "off data.train is then 0.2 of it, at most 2,000 rows but never under 0.1, unless data.validation_fraction "
        "is set (a choice on more rows).",
    )

    @model_validator(mode="after")
    def _space(self) -> SweepConfig:
        problems = []
        if not self.parameters:
            problems.append("sweep.parameters is empty: name at least one job key to search over")
        for key in self.parameters:
            if key.split(".")[0] not in SEARCHABLE_SECTIONS or "." not in key:
                problems.append(
                    f"sweep.parameters.{key}: expected a dotted key in one of {list(SEARCHABLE_SECTIONS)}, "
                    "e.g. training.learning_rate"
                )
        kinds = {p.type for p in self.parameters.values()}
        if self.search == "grid" and kinds - {"grid", "choice"}:
            problems.append("sweep.search 'grid' needs every parameter of type grid or choice")
        if self.search == "optuna" and "grid" in kinds:
            problems.append("sweep.search 'optuna' cannot take type grid parameters; use choice")
        if self.scheduler.type == "pb2" and kinds - {"uniform", "loguniform"}:
            problems.append("sweep.scheduler.type 'pb2' explores continuous ranges only: use uniform/loguniform")
        for i, point in enumerate(self.initial_points):
            unknown = sorted(set(point) - set(self.parameters))
            if unknown:
                problems.append(f"sweep.initial_points[{i}]: {unknown} are not in sweep.parameters")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def restores_checkpoints(self) -> bool:
        """PBT/PB2 copy checkpoints between trials; synchronous HyperBand pauses and resumes trials."""
        return self.scheduler.type in ("pbt", "pb2", "hyperband")
