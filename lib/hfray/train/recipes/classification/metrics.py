"""Evaluation metrics through Hugging Face ``evaluate``.

``evaluate.load("accuracy")`` fetches the metric script from the Hub, which fails offline. hfray
registers the four classification metrics as local ``evaluate.Metric`` classes that compute the
same thing as the Hub scripts (scikit-learn underneath), so they work everywhere; any other name
goes to ``evaluate.load`` unchanged (a Hub id or a local script path).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from hfray.data.classification import IGNORED_LABEL

# evaluate and scikit-learn load when the first evaluation computes its metrics, not before the first training step
# (about 1 s of imports on a Ray worker at start-up, bench/results/overhead_cpu.md).


@functools.cache
def _local_metrics() -> dict[str, type]:
    """The four classification metrics as ``evaluate.Metric`` classes (scikit-learn underneath)."""
    import datasets
    import evaluate
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    features = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})

    class _SklearnMetric(evaluate.Metric):
        """A classification metric with the interface of the Hub's evaluate-metric scripts."""

        score: Callable[..., float]

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                description=f"{type(self).__name__} (scikit-learn), as evaluate-metric/{type(self).__name__.lower()}",
                citation="Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011.",
                inputs_description="predictions and references: lists of class ids",
                features=features,
            )

        def _compute(self, predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
            return {type(self).__name__.lower(): float(type(self).score(references, predictions, **kwargs))}

    scores = {"Accuracy": accuracy_score, "F1": f1_score, "Precision": precision_score, "Recall": recall_score}
    return {
        name.lower(): type(name, (_SklearnMetric,), {"score": staticmethod(fn), "__module__": __name__})
        for name, fn in scores.items()
    }


def load_metric(name: str) -> Any:
    """A metric by evaluate name (an ``evaluate.EvaluationModule``); the four classification metrics work offline."""
    local = _local_metrics()
    if name in local:
        return local[name](keep_in_memory=True)
    import evaluate

    return evaluate.load(name, keep_in_memory=True)


def _split_name(metric: str) -> tuple[str, dict[str, Any]]:
    """'f1_macro' -> ('f1', {'average': 'macro'}); 'accuracy' -> ('accuracy', {})."""
    base, _, average = metric.partition("_")
    if not average:
        return base, {}
    return base, {
        "average": average,
        **({"zero_division": 0} if base in ("precision", "recall", "f1") else {}),
    }


def classification_metrics_fn(names: list[str]) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for the HF Trainer that reports each of ``names`` (e.g. 'f1_macro')."""
    modules: dict[str, Any] = {}

    def compute(eval_pred: Any) -> dict[str, float]:
        if not modules:  # at the first evaluation
            modules.update({base: load_metric(base) for base, _ in map(_split_name, names)})
        logits, references = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        references = np.asarray(references)
        real = references != IGNORED_LABEL  # rows that filled a short batch (FullBatches) score nothing
        predictions, references = np.asarray(logits).argmax(axis=-1)[real], references[real]
        results = {}
        for name in names:
            base, kwargs = _split_name(name)
            value = modules[base].compute(predictions=predictions, references=references, **kwargs)
            results[name] = float(value[base])
        return results

    return compute
