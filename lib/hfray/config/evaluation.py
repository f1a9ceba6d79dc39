"""``evaluation:``: which metrics every evaluation reports and which one picks the best checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hfray.config.section import Section

# Metric names hfray computes for classification (hfray.train.recipes.classification.metrics); "loss" is always
# reported.
CLASSIFICATION_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_micro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
)


class EvaluationConfig(Section):
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "f1_macro", "precision_macro", "recall_macro"])
    metric_for_best_model: str = Field("f1_macro", description="'loss' or one of evaluation.metrics.")
    greater_is_better: bool | None = Field(None, description="Default: False for loss, True otherwise.")
    load_best_model_at_end: bool = True

    @model_validator(mode="after")
    def _metric_names(self) -> EvaluationConfig:
        # Which names are known depends on the task: JobConfig checks them (metric_problems).
        if self.metric_for_best_model != "loss" and self.metric_for_best_model not in self.metrics:
            raise ValueError(
                f"evaluation.metric_for_best_model {self.metric_for_best_model!r} must be 'loss' "
                f"or one of evaluation.metrics {self.metrics}"
            )
        return self

    @property
    def best_metric_key(self) -> str:
        """The key under which the metric reaches Ray (HF prefixes eval metrics with 'eval_')."""
        return f"eval_{self.metric_for_best_model}"

    @property
    def best_mode(self) -> Literal["max", "min"]:
        greater = self.greater_is_better
        if greater is None:
            greater = self.metric_for_best_model != "loss"
        return "max" if greater else "min"
