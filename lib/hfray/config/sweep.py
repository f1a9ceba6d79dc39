"""The ``sweep:`` section of a job file: search space, search algorithm and early-stopping scheduler.

The search space names job keys by their dotted path (``training.learning_rate``,
``model.architecture.num_hidden_layers``, ``training.extra_args.adam_beta2``). Every trial is the job
file with the sampled values written at those paths, re-validated like any job. Scheduler times
(``grace_period``, ``max_t``, ``perturbation_interval``) count optimizer steps, the ``step`` hfray
reports at every evaluation: steps mean the same thing for ASHA and PBT, and after a PBT exploit the
step continues from the donor's checkpoint.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from hfray.config.section import Section

# Sections a search space may touch: what changes training, not where it runs or is stored.
SEARCHABLE_SECTIONS = ("model", "data", "training", "evaluation", "peft")


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
    grace_period: int | None = Field(None, ge=1, description="Steps before a trial can be stopped; default: 1 eval.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA/HyperBand: keep 1/reduction_factor per rung.")
    max_t: int | None = Field(None, ge=1, description="Steps of the longest trial; default: from the job.")
    brackets: int = Field(1, ge=1, description="ASHA brackets.")
    min_samples_required: int = Field(3, ge=1, description="median: trials needed before stopping any.")
    perturbation_interval: int | None = Field(None, ge=1, description="PBT/PB2: steps; default: 1 eval.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom fraction copies the top one.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: resample instead of perturb.")
    perturbation_factors: tuple[float, float] = (1.2, 0.8)


class SweepConfig(Section):
    parameters: dict[str, Param] = Field(description="Dotted job key -> distribution.")
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
