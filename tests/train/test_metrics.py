from types import SimpleNamespace

import numpy as np
import pytest

from hfray.train.recipes.classification.metrics import classification_metrics_fn, load_metric


def test_metrics_match_hand_computed_values():
    compute = classification_metrics_fn(["accuracy", "f1_macro", "precision_macro", "recall_macro"])
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predicts 0, 1, 1, 0
    out = compute(SimpleNamespace(predictions=logits, label_ids=np.array([0, 1, 0, 0])))
    assert out["accuracy"] == pytest.approx(0.75)
    # class 0: P=1, R=2/3; class 1: P=1/2, R=1
    assert out["precision_macro"] == pytest.approx(0.75)
    assert out["recall_macro"] == pytest.approx(5 / 6)
    assert out["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_local_metrics_are_evaluate_modules():
    import evaluate

    metric = load_metric("accuracy")
    assert isinstance(metric, evaluate.EvaluationModule)
    assert metric.compute(predictions=[1, 1], references=[1, 0]) == {"accuracy": 0.5}
