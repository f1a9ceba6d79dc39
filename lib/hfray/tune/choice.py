"""The sweep's chosen model after the trials: how sure the choice is, how it does on ``data.test``, the refit.

:func:`check_choice` runs on the driver once the best checkpoint is exported. It returns what goes into
``hfray_sweep.json`` and the Markdown sections of ``sweep_report.md`` (:mod:`hfray.tune.holdout` has the numbers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hfray.artifacts.manifest import read_manifest
from hfray.config import JobConfig
from hfray.storage import fs, layout
from hfray.tune import holdout
from hfray.tune.plan import SweepPlan, prepared_splits, split_sizes
from hfray.tune.results import TrialRow

TOP_K = 3  # trials whose own test metrics the report shows beside the exported model's
TIMINGS = ("_runtime", "_per_second")  # HF's evaluation timings: not metrics of the model


@dataclass
class Choice:
    artifact: str | None
    summary: dict[str, Any] = field(default_factory=dict)  # into hfray_sweep.json
    sections: list[str] = field(default_factory=list)  # into sweep_report.md


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    scored = [r for r in rows if r.best_value is not None]
    return sorted(scored, key=lambda r: r.best_value, reverse=mode == "max")  # type: ignore[arg-type, return-value]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _selection_section(sel: dict[str, Any]) -> str:
    lines = [
        "## How sure is the choice",
        "",
        f"Validation: {sel['validation_rows']} rows. Best {sel['best']['trial_id']} {sel['metric']} "
        f"{_fmt(sel['best']['value'])}, runner-up {sel['runner_up']['trial_id']} {_fmt(sel['runner_up']['value'])}: "
        f"gap {_fmt(sel['gap'])}, standard error of {sel['metric']} {_fmt(sel['standard_error'])}.",
    ]
    if sel.get("note"):
        lines.append(f"({sel['note']}.)")
    lines.append(f"\n**Warning:** {sel['warning']}." if sel["warning"] else "\nThe gap is over 2 standard errors.")
    return "\n".join(lines) + "\n"


def _test_rows(rows: list[TrialRow], plan: SweepPlan) -> list[tuple[str, float | None, dict[str, float]]]:
    """The top-k trials' own artifacts (their final model) and the test metrics each recorded."""
    out = []
    for row in ranked(rows, plan.mode)[:TOP_K]:
        art = fs.join(plan.trials_storage, row.runs[-1], layout.ARTIFACT_DIR) if row.runs else ""
        if art and fs.exists(fs.join(art, layout.MANIFEST)):
            out.append((f"trial {row.trial_id} (its own final model)", row.best_value, _test_of(art)))
    return out


def _test_of(artifact: str) -> dict[str, float]:
    return holdout.trial_heldout_metrics(read_manifest(artifact))


def _test_section(plan: SweepPlan, table: list[tuple[str, float | None, dict[str, float]]]) -> str:
    keys = sorted({k for _, _, m in table for k in m if k != "test_rows" and not k.endswith(TIMINGS)})
    n = split_sizes(plan.prepared).get("test", 0)
    lines = [
        f"## Held-out test (data.test, {n} rows; no trial was chosen on it)",
        "",
        "| model | " + " | ".join([f"validation {plan.metric}", *keys]) + " |",
        "|" + "---|" * (2 + len(keys)),
    ]
    for name, val, metrics in table:
        lines.append("| " + " | ".join([name, _fmt(val), *(_fmt(metrics.get(k)) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def check_choice(job: JobConfig, rows: list[TrialRow], best: TrialRow | None, artifact: str | None,
                 plan: SweepPlan) -> Choice:  # fmt: skip
    choice = Choice(artifact)
    sel = holdout.selection([(r.trial_id, float(r.best_value)) for r in ranked(rows, plan.mode)], plan)  # type: ignore[arg-type]
    if sel is not None:
        choice.summary["selection"] = sel
        choice.sections.append(_selection_section(sel))
        if sel["warning"]:
            print(f"[hfray] warning: {sel['warning']}")
    if best is None or artifact is None:
        return choice
    table = []
    exported = None
    if best.best_checkpoint is not None:  # the trial measured these weights on data.test already
        exported = holdout.selected_trial_test(best.best_checkpoint, best.best_step, plan)
    exported = exported or holdout.heldout_metrics(artifact, plan, job)
    if exported is not None:
        kind = "selected checkpoint" if job.sweep is not None and job.sweep.refit else "exported"
        table.append((f"{kind}: trial {best.trial_id} at step {best.best_step}", best.best_value, exported))
        choice.summary["test"] = exported
    if job.sweep is not None and job.sweep.refit:
        _refit(choice, best, plan, table)
    if "test" in prepared_splits(plan.prepared):
        table += _test_rows(rows, plan)
        choice.sections.append(_test_section(plan, table))
        for name, _, metrics in table[:2]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith(TIMINGS))
            print(f"[hfray] {name}: {shown}")
    return choice


def _refit(choice: Choice, best: TrialRow, plan: SweepPlan, table: list[Any]) -> None:
    """``sweep.refit``; if it fails, the selected checkpoint stays the sweep's artifact and the report says why."""
    from hfray.tune.refit import refit_and_export

    assert choice.artifact is not None
    rows_used = plan.prepared.sizes["train"] + plan.prepared.sizes["validation"]
    started = time.time()
    try:
        choice.artifact, metrics = refit_and_export(plan, best.params, read_manifest(choice.artifact)["sweep"])
    except Exception as exc:  # the trials' results and the selected model are still worth a report
        message = f"sweep.refit failed, the selected checkpoint stays the sweep's artifact: {exc}"
        print(f"[hfray] warning: {message}")
        choice.summary["refit"] = {"error": str(exc)}
        choice.sections.append(f"## Refit\n\n**{message}**\n")
        return
    refit_test = {k: v for k, v in metrics.items() if k.startswith("test_")}
    seconds = round(time.time() - started, 1)
    choice.summary["refit"] = {"train_rows": rows_used, "test": refit_test, "seconds": seconds}
    name = f"exported: refit of trial {best.trial_id} on train + validation ({rows_used} rows)"
    table.insert(0, (name, None, refit_test))
