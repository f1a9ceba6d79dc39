"""After a sweep: one row per trial (why it stopped included), the best checkpoint, the report files.

The best checkpoint is chosen across every trial's *checkpointed* evaluations (a stopped trial's
best checkpoint counts too) and exported as the same slim artifact ``hfray train`` writes.
Report files land in the sweep folder: ``sweep_report.csv``, ``sweep_report.md``,
``learning_curves.png`` and ``hfray_sweep.json``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from hfray.artifacts.export import export_from_checkpoint
from hfray.artifacts.manifest import build_manifest
from hfray.storage import fs, layout
from hfray.tune.adapter_export import adapter_fields, copy_adapter_base
from hfray.tune.plan import SweepPlan, data_facts
from hfray.tune.schedulers import TIME_ATTR, read_decisions
from hfray.tune.space import trial_job_dict

REPORT_CSV, REPORT_MD, CURVES_PNG = "sweep_report.csv", "sweep_report.md", "learning_curves.png"
SUMMARY = layout.SWEEP_SUMMARY


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    best_value: float | None
    best_step: int | None
    best_checkpoint: str | None  # URI of the best checkpointed evaluation, if still kept
    steps_run: int
    seconds: float
    stop_reason: str
    runs: list[str] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)


def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def _reports(result: Any) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    return [] if df is None else df.to_dict("records")


def _best_checkpoint(reports: list[dict[str, Any]], plan: SweepPlan) -> tuple[float | None, int | None, str | None]:
    best: tuple[float | None, int | None, str | None] = (None, None, None)
    for rep in reports:
        value, path, run = rep.get(plan.metric), rep.get("checkpoint_path"), rep.get("hfray_run")
        if not isinstance(path, str) or not isinstance(run, str) or value is None or math.isnan(value):
            continue
        uri = fs.join(plan.trials_storage, run, os.path.basename(path))
        if _better(value, best[0], plan.mode) and fs.exists(uri):
            best = (float(value), int(rep[TIME_ATTR]), uri)
    return best


def _stop_reason(
    result: Any, trial_id: str, runs: list[str], decisions: list[dict[str, Any]], plan: SweepPlan, budget_hit: bool
) -> str:
    notes = [
        f"took over {d['donor']}'s checkpoint at step {d['donor_step']}"
        for d in decisions
        if d["action"] == "exploit" and d["trial_id"] == trial_id
    ]
    finished = bool(runs) and fs.exists(fs.join(plan.trials_storage, runs[-1], layout.ARTIFACT_DIR, layout.MANIFEST))
    stops = [d for d in decisions if d["action"] == "stop" and d["trial_id"] == trial_id]
    if result.error is not None:
        reason = f"error: {str(result.error).strip().splitlines()[-1][:160]}"
    elif stops:
        reason = f"stopped early by {stops[-1]['scheduler']} at step {stops[-1]['step']}"
        reason += f": {stops[-1]['reason']}" if stops[-1].get("reason") else ""
        reason += " (as its last steps finished)" if finished else ""
    elif finished:
        reason = "completed"
    else:
        reason = "time budget reached" if budget_hit else "not finished (sweep interrupted)"
    return "; ".join([reason, *notes])


def trial_rows(grid: Any, plan: SweepPlan, budget_hit: bool) -> list[TrialRow]:
    decisions = read_decisions(plan.scheduler_log)
    rows = []
    for result in grid:
        reports = _reports(result)
        trial_id = os.path.basename(result.path).removeprefix("trial_")
        runs = list(dict.fromkeys(r["hfray_run"] for r in reports if isinstance(r.get("hfray_run"), str)))
        value, step, uri = _best_checkpoint(reports, plan)
        curve = [
            (int(r[TIME_ATTR]), float(r[plan.metric]))
            for r in reports
            if r.get(plan.metric) is not None and not math.isnan(r[plan.metric])
        ]
        last = reports[-1] if reports else {}
        rows.append(
            TrialRow(
                trial_id,
                dict(result.config),
                value,
                step,
                uri,
                int(last.get(TIME_ATTR, 0) or 0),
                float(last.get("time_total_s", 0.0) or 0.0),
                _stop_reason(result, trial_id, runs, decisions, plan, budget_hit),
                runs,
                curve,
            )
        )
    return rows


def row_dict(row: TrialRow) -> dict[str, Any]:
    return {k: v for k, v in asdict(row).items() if k != "curve"}


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    best = None
    for row in rows:
        if (
            row.best_value is not None
            and row.best_checkpoint
            and _better(row.best_value, best and best.best_value, mode)
        ):
            best = row
    return best


# ----------------------------------------------------------------------------- report files


def scheduler_line(kind: str, plan: SweepPlan) -> str:
    """What the scheduler was told, in steps: shown on the console and in the report."""
    where = f"evaluations every {plan.eval_interval} steps, longest warmup {plan.warmup_steps} steps"
    if kind in ("asha", "median"):
        line = f"{kind}: no trial judged before step {plan.grace_period} (grace period; max_t {plan.max_t}; {where})"
        if plan.no_skill is not None:
            line += f"; from then on a trial at or below {plan.metric} {plan.no_skill:.4f} (one label predicted) stops"
        return line
    if kind in ("pbt", "pb2"):
        return f"{kind}: perturbation every {plan.perturbation_interval} steps ({where})"
    if kind == "hyperband":
        return f"hyperband: max_t {plan.max_t} steps ({where})"
    return "fifo: every trial runs to its end"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _table(rows: list[TrialRow], plan: SweepPlan, best: TrialRow | None) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for row in rows for k in row.params})
    header = ["trial", *keys, f"best {plan.metric}", "at step", "steps run", "trial seconds", "why it stopped"]
    body = []
    for row in rows:
        name = row.trial_id + (" (best)" if best is not None and row is best else "")
        body.append(
            [
                name,
                *(_fmt(row.params.get(k)) for k in keys),
                _fmt(row.best_value),
                _fmt(row.best_step),
                str(row.steps_run),
                f"{row.seconds:.1f}",
                row.stop_reason,
            ]
        )
    return header, body


def _markdown(header: list[str], body: list[list[str]], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _plot(rows: list[TrialRow], plan: SweepPlan, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        if not row.curve:
            continue
        steps, values = zip(*row.curve, strict=True)
        stopped = not row.stop_reason.startswith("completed")
        (line,) = ax.plot(steps, values, linestyle="--" if stopped else "-", marker=".", label=row.trial_id)
        if stopped:
            ax.plot(steps[-1], values[-1], marker="x", markersize=10, color=line.get_color())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(plan.metric)
    ax.set_title(f"{plan.sweep_name}: {plan.metric} per trial (dashed, x: stopped early)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    rows: list[TrialRow],
    plan: SweepPlan,
    best: TrialRow | None,
    extra: dict[str, Any],
    sections: list[str] | None = None,
) -> None:
    import csv

    header, body = _table(rows, plan, best)
    with tempfile.TemporaryDirectory(prefix="hfray-report-") as stage:
        with open(os.path.join(stage, REPORT_CSV), "w", newline="") as f:
            csv.writer(f).writerows([header, *body])
        with open(os.path.join(stage, REPORT_MD), "w") as f:
            f.write(_markdown(header, body, f"Sweep {plan.sweep_name} ({plan.metric}, {plan.mode})"))
            f.write(f"\nScheduler: {scheduler_line(extra['scheduler'], plan)}.\n")
            f.writelines(f"\n{section}" for section in sections or [])
        _plot(rows, plan, os.path.join(stage, CURVES_PNG))
        summary = {
            "sweep": plan.sweep_name,
            "metric": plan.metric,
            "mode": plan.mode,
            **extra,
            "best_trial": best.trial_id if best else None,
            "trials": [row_dict(r) for r in rows],
        }
        with open(os.path.join(stage, SUMMARY), "w") as f:
            json.dump(summary, f, indent=2, default=str)
        fs.upload_dir(stage, plan.sweep_dir)


def export_best(best: TrialRow, plan: SweepPlan) -> str:
    """The best checkpoint as ``<sweep>/artifact``: slim model + tokenizer + manifest."""
    dest = fs.join(plan.sweep_dir, layout.ARTIFACT_DIR)
    job = trial_job_dict(plan.base_job, best.params, plan.trials_storage)
    manifest = build_manifest(
        **plan.artifact_fields,  # the pipeline it loads as, the same as the trials' own artifacts
        job=job,
        run_name=best.runs[-1] if best.runs else best.trial_id,
        metrics={plan.metric: best.best_value},
        best={"step": best.best_step, "metric": plan.metric, "value": best.best_value},
        global_step=best.best_step,
        labels=getattr(plan.prepared, "labels", []),
        sweep={
            "name": plan.sweep_name,
            "trial_id": best.trial_id,
            "params": best.params,
            "checkpoint": best.best_checkpoint,
        },
        data=data_facts(plan.prepared),
        **adapter_fields(plan.base_job, plan.trials_storage, best.runs),  # PEFT sweeps: the adapter's facts
    )
    assert best.best_checkpoint is not None
    export_from_checkpoint(best.best_checkpoint, dest, manifest)
    copy_adapter_base(plan.base_job, plan.trials_storage, best.runs, dest)
    return dest
