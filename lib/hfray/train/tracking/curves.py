"""A run's learning curve: training and validation loss, the chosen metric, and a diagnosis (on the driver).

Drawn on the driver from ``<run>/hfray_metrics.jsonl`` (every evaluation, resumed attempts included),
written as ``<run>/learning_curve.png`` and ``<run>/learning_curve.json`` (the diagnosis). The
diagnosis reads the validation loss against the training loss:

* **overfitting**: validation loss rose more than ``tolerance`` above its minimum while training loss kept
  falling; the best checkpoint is the minimum's step;
* **still improving**: validation loss fell by more than ``tolerance`` over the last third of the
  evaluations: more steps would likely help (under-fitting);
* **converged**: neither; **too few evaluations**: fewer than three.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from hfray.artifacts.metrics_log import read_metrics_log
from hfray.storage import fs, layout

CURVE_PNG, CURVE_JSON = layout.CURVE_PNG, layout.CURVE_JSON


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) per record carrying ``key``; a resumed attempt's repeated steps keep the latest value."""
    by_step = {int(r["step"]): float(r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r}
    return sorted(by_step.items())


def diagnose(records: list[dict[str, Any]], tolerance: float = 0.05) -> dict[str, Any]:
    evals, train = _series(records, "eval_loss"), _series(records, "train_loss")
    if len(evals) < 3:
        return {"verdict": "too few evaluations", "message": f"{len(evals)} evaluations: need 3 to judge the curve"}
    best_step, best = min(evals, key=lambda p: p[1])
    last_step, last = evals[-1]
    train_at = dict(train)
    out: dict[str, Any] = {"best_step": best_step, "best_eval_loss": best, "last_eval_loss": last}
    if train:
        out["generalization_gap"] = last - train[-1][1]
    train_fell = best_step in train_at and last_step in train_at and train_at[last_step] < train_at[best_step]
    third = evals[-max(2, len(evals) // 3) :]
    if last > best * (1 + tolerance) and (train_fell or not train):
        rise = 100 * (last - best) / best
        verdict, msg = (
            "overfitting",
            (
                f"validation loss rose {rise:.0f}% since its minimum at step {best_step} while training loss kept "
                f"falling: the model memorises; keep the checkpoint of step {best_step}, add data or regularisation"
            ),
        )
    elif third[0][1] > third[-1][1] * (1 + tolerance):
        verdict, msg = (
            "still improving",
            (
                f"validation loss still fell {100 * (third[0][1] - third[-1][1]) / third[0][1]:.0f}% over the last "
                f"{len(third)} evaluations: more steps would likely help"
            ),
        )
    else:
        verdict, msg = "converged", f"validation loss flat (within {tolerance:.0%}) around its best at step {best_step}"
    return {**out, "verdict": verdict, "message": msg}


# Drawn in a third panel when the log has them (grpo): the KL to the reference and the completions' length.
EXTRA_SERIES = (
    ("eval_kl", "KL to the reference", "tab:red"),
    ("eval_completions/mean_length", "completion length", "tab:purple"),
)


def _metric_panel(ax: Any, records: list[dict[str, Any]], metric_key: str) -> bool:
    """The chosen metric; its spread (``<metric>_std``) as a band and its training-side series when logged."""
    metrics = _series(records, metric_key) if metric_key != "eval_loss" else []
    if not metrics:
        return False
    ax.plot(*zip(*metrics, strict=True), "-o", color="tab:green", markersize=3, label=metric_key)
    spread = dict(_series(records, f"{metric_key}_std"))
    if spread and all(step in spread for step, _ in metrics):
        steps = [step for step, _ in metrics]
        low = [v - spread[step] for step, v in metrics]
        high = [v + spread[step] for step, v in metrics]
        ax.fill_between(steps, low, high, color="tab:green", alpha=0.15, label="± std")
    train = _series(records, metric_key.replace("eval_", "train_", 1))
    if train:
        ax.plot(*zip(*train, strict=True), "--", color="tab:olive", label=metric_key.replace("eval_", "train_", 1))
    ax.legend(fontsize=8)
    return True


def _extra_panel(ax: Any, found: list[tuple[str, str, str, list[tuple[int, float]]]]) -> None:
    twin = ax
    for i, (_, label, color, series) in enumerate(found):
        twin = ax if i == 0 else ax.twinx()
        twin.plot(*zip(*series, strict=True), "-o", color=color, markersize=3)
        twin.set_ylabel(label, color=color)
    ax.set(xlabel="optimizer step", title=" and ".join(label for _, label, _, _ in found))


def plot(records: list[dict[str, Any]], metric_key: str, title: str, diagnosis: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extras = [(k, label, color, s) for k, label, color in EXTRA_SERIES if (s := _series(records, k))]
    fig, axes = plt.subplots(1, 3 if extras else 2, figsize=(16 if extras else 11, 4.5))
    loss_ax, metric_ax = axes[0], axes[1]
    if extras:
        _extra_panel(axes[2], extras)
    for key, label, style in (("train_loss", "training loss", "-"), ("eval_loss", "validation loss", "-o")):
        series = _series(records, key)
        if series:
            loss_ax.plot(*zip(*series, strict=True), style, label=label, markersize=3)
    if "best_step" in diagnosis:
        loss_ax.axvline(diagnosis["best_step"], color="grey", linestyle=":", label="best validation loss")
    loss_ax.set(xlabel="optimizer step", ylabel="loss", title="loss")
    metrics = _metric_panel(metric_ax, records, metric_key)
    metric_ax.set(
        xlabel="optimizer step", ylabel=metric_key, title=metric_key if metrics else "(no metric besides loss)"
    )
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    fig.suptitle(f"{title}\n{diagnosis['verdict']}: {diagnosis['message']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_learning_curve(run_dir: str, metric_key: str, title: str) -> dict[str, Any] | None:
    """Draw ``<run_dir>``'s curve from its metrics log into the run folder; the diagnosis, or None without data."""
    records = read_metrics_log(layout.metrics_log_uri(run_dir))
    if not records:
        return None
    diagnosis = diagnose(records)
    with tempfile.TemporaryDirectory(prefix="hfray-curve-") as stage:
        plot(records, metric_key, title, diagnosis, os.path.join(stage, CURVE_PNG))
        with open(os.path.join(stage, CURVE_JSON), "w") as f:
            json.dump({"metric": metric_key, **diagnosis}, f, indent=2)
        fs.upload_dir(stage, run_dir)
    return diagnosis
