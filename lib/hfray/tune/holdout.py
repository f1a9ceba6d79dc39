"""How far a sweep's choice can be trusted: the validation metric's noise, and the chosen model on held-out data.

A sweep picks the trial with the best validation score; on a small validation split the gaps between trials
can be smaller than the score's own noise. :func:`selection` compares the gap between the best and the
runner-up with the standard error of the metric (``sqrt(p(1-p)/n)`` for the classification metrics, a
proportion's binomial standard error, with add-one smoothing; F1, precision and recall are treated the same way,
an approximation) and says so when the gap is under 2 standard errors. Loss gets no standard error here.

:func:`heldout_metrics` evaluates an exported artifact on ``data.test``, a split no trial was chosen on, on the
driver with the artifact's own pipeline (text classification; other tasks report the trials' own test metrics).
:func:`selected_trial_test` saves that pass when the selected checkpoint's trial already scored those weights on
``data.test`` (a completed trial exports its best checkpoint with ``evaluation.load_best_model_at_end``).
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace
from typing import Any

from hfray.artifacts.manifest import read_manifest
from hfray.config import CLASSIFICATION_METRICS
from hfray.storage import fs, layout
from hfray.tune.plan import SweepPlan, prepared_splits, split_sizes

NOISE_SE = 2.0  # a gap under this many standard errors is within the validation split's noise


def standard_error(metric: str, value: float, n: int) -> float | None:
    """Binomial standard error of a proportion-like metric on ``n`` rows; None for loss and other metrics."""
    if metric.removeprefix("eval_") not in CLASSIFICATION_METRICS or n <= 0:
        return None
    # Add-one smoothing ((k + 1) / (n + 2)): a perfect score on a few rows is not a certainty (p = 1 gives 0).
    p = (min(max(value, 0.0), 1.0) * n + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)


def selection(ranked: list[tuple[str, float]], plan: SweepPlan) -> dict[str, Any] | None:
    """``ranked``: (trial id, best value), best first. The numbers behind the choice, and a warning if noisy."""
    if len(ranked) < 2:
        return None
    n = split_sizes(plan.prepared).get("validation", 0)
    (best_id, best), (second_id, second) = ranked[0], ranked[1]
    se = standard_error(plan.metric, best, n)
    out: dict[str, Any] = {
        "metric": plan.metric,
        "validation_rows": n,
        "best": {"trial_id": best_id, "value": best},
        "runner_up": {"trial_id": second_id, "value": second},
        "gap": abs(best - second),
        "standard_error": se,
        "warning": None,
    }
    if se is None:
        out["note"] = f"no standard error for {plan.metric}: the gap is not checked against noise"
        return out
    close = sum(abs(best - v) < NOISE_SE * se for _, v in ranked[1:])
    out["within_noise"] = close
    if out["gap"] < NOISE_SE * se:
        out["warning"] = (
            f"the best trial {best_id} ({plan.metric} {best:.4f}) beats the runner-up {second_id} ({second:.4f}) "
            f"by {out['gap']:.4f}, less than {NOISE_SE:g} standard errors ({NOISE_SE:g} x {se:.4f}) of "
            f"{plan.metric} on {n} validation rows; {close} trial(s) are within that noise of the best. "
            "The choice among them is not reliable: use a larger validation split, data.test to check it, "
            "or sweep.refit"
        )
    return out


def no_skill(job: Any, prepared: Any, metric: str) -> float | None:
    """``metric`` on the validation split of always predicting the training split's most frequent label: what a
    trial that learned nothing scores (text and image classification with a classification metric; else None)."""
    splits = getattr(prepared, "splits", None)
    name = metric.removeprefix("eval_")
    if name not in CLASSIFICATION_METRICS or splits is None or "validation" not in splits:
        return None
    labels, column = list(prepared.labels), job.data.label_column
    train, validation = splits["train"][column], splits["validation"][column]
    if not train or not validation or any(isinstance(v, (list, tuple)) for v in train[:1]):
        return None
    from hfray.train.recipes.classification.metrics import classification_metrics_fn

    majority = labels.index(str(Counter(str(v) for v in train).most_common(1)[0][0]))
    constant = [[1.0 if i == majority else 0.0 for i in range(len(labels))]] * len(validation)
    references = [labels.index(str(v)) for v in validation]
    return classification_metrics_fn([name])(SimpleNamespace(predictions=constant, label_ids=references))[name]


def heldout_metrics(artifact: str, plan: SweepPlan, job: Any) -> dict[str, float] | None:
    """``test_<metric>`` of an artifact on the prepared test split (text classification); None without one."""
    splits = prepared_splits(plan.prepared)
    if "test" not in splits or job.task != "text-classification":
        return None
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.recipes.classification.metrics import classification_metrics_fn

    cfg, labels = job.data, plan.prepared.labels
    test = splits["test"]
    texts: list[Any] = [t or "" for t in test[cfg.text_column]]
    if cfg.text_pair_column:
        texts = [{"text": t, "text_pair": p or ""} for t, p in zip(texts, test[cfg.text_pair_column], strict=True)]
    pipe = load_artifact_pipeline(artifact)
    out = pipe(texts, batch_size=64, truncation=True, max_length=cfg.max_length)
    predicted = [labels.index(o["label"]) for o in out]
    onehot = [[1.0 if i == p else 0.0 for i in range(len(labels))] for p in predicted]
    references = [labels.index(str(v)) for v in test[cfg.label_column]]
    scores = classification_metrics_fn(job.evaluation.metrics)(
        SimpleNamespace(predictions=onehot, label_ids=references)
    )
    return {f"test_{k}": v for k, v in scores.items()} | {"test_rows": float(len(test))}


def trial_heldout_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The test metrics a completed trial's own artifact recorded (its final model on ``data.test``)."""
    return {k: v for k, v in manifest.get("metrics", {}).items() if k.startswith("test_")}


def selected_trial_test(checkpoint: str, step: int | None, plan: SweepPlan) -> dict[str, float] | None:
    """``data.test`` metrics of the selected ``checkpoint`` (at ``step``) that its own trial already measured, or None.

    A completed trial with ``evaluation.load_best_model_at_end`` exports its best checkpoint's weights and scores them
    on ``data.test`` (the recipe's worker); when that best is the sweep's selected ``step`` of the same run, those are
    the selected checkpoint's test metrics, and scoring it again on the driver (a pass over ``data.test``, 10 s for
    1,281 rows of MiniLM on 2 CPUs) measures the same weights on the same rows. Not reused when a ``data.*`` key is
    swept (a trial's test rows may then differ from the driver's).
    """
    data_swept = any(k.startswith("data.") for k in plan.base_job["sweep"]["parameters"])
    if "test" not in prepared_splits(plan.prepared) or data_swept:
        return None
    artifact = fs.join(checkpoint.rstrip("/").rsplit("/", 1)[0], layout.ARTIFACT_DIR)
    if step is None or not fs.exists(fs.join(artifact, layout.MANIFEST)):
        return None
    manifest = read_manifest(artifact)
    loaded_best = manifest.get("job", {}).get("evaluation", {}).get("load_best_model_at_end")
    if not loaded_best or (manifest.get("best") or {}).get("step") != step:
        return None
    test = trial_heldout_metrics(manifest)
    if not test:
        return None
    timings = ("_runtime", "_per_second")  # HF's evaluation timings: not metrics of the model
    kept = {k: v for k, v in test.items() if not k.endswith(timings)}
    rows = split_sizes(plan.prepared).get("test") or len(prepared_splits(plan.prepared)["test"])
    return kept | {"test_rows": float(rows)}
