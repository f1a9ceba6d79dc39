"""Evaluation metrics through Hugging Face ``evaluate``.

``evaluate.load("accuracy")`` fetches the metric script from the Hub, which fails offline. hfray
registers the four classification metrics as local ``evaluate.Metric`` classes that compute the
same thing as the Hub scripts (scikit-learn underneath), so they work everywhere; any other name
goes to ``evaluate.load`` unchanged (a Hub id or a local script path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class _SklearnMetric(evaluate.Metric):
    """A classification metric with the interface of the Hub's evaluate-metric scripts."""

    score: Callable[..., float]

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=f"{type(self).__name__} (scikit-learn), as evaluate-metric/{type(self).__name__.lower()}",
            citation="Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011.",
            inputs_description="predictions and references: lists of class ids",
            features=_FEATURES,
        )

    def _compute(self, predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
        return {type(self).__name__.lower(): float(type(self).score(references, predictions, **kwargs))}


class Accuracy(_SklearnMetric):
    score = staticmethod(accuracy_score)


class F1(_SklearnMetric):
    score = staticmethod(f1_score)


class Precision(_SklearnMetric):
    score = staticmethod(precision_score)


class Recall(_SklearnMetric):
    score = staticmethod(recall_score)


_LOCAL = {"accuracy": Accuracy, "f1": F1, "precision": Precision, "recall": Recall}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """A metric by evaluate name; the four classification metrics work offline."""
    if name in _LOCAL:
        return _LOCAL[name](keep_in_memory=True)
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
    modules = {base: load_metric(base) for base, _ in map(_split_name, names)}

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, references = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(axis=-1)
        results = {}
        for name in names:
            base, kwargs = _split_name(name)
            value = modules[base].compute(predictions=predictions, references=references, **kwargs)
            results[name] = float(value[base])
        return results

    return compute
