"""The runs and sweeps under a storage root (local or ``s3://``), with their best metrics (``hfray runs``).

Reads only what runs leave behind (``hfray_metrics.jsonl``, the artifact manifest, ``hfray_sweep.json``,
``learning_curve.json``), so it lists runs of any job, finished or interrupted, without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from hfray.artifacts.metrics_log import read_metrics_log
from hfray.errors import HfrayError
from hfray.storage import fs, layout


@dataclass
class RunRow:
    name: str
    kind: str  # run | sweep
    status: str
    steps: int | None
    metric: str | None
    best: float | None
    best_step: int | None
    diagnosis: str | None
    path: str


def _maybe_json(uri: str) -> dict[str, Any] | None:
    return json.loads(fs.read_text(uri)) if fs.exists(uri) else None


def _best_from_log(records: list[dict[str, Any]]) -> tuple[str | None, float | None, int | None]:
    """An unfinished run has no manifest: its lowest evaluation loss so far."""
    evals = [r for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not evals:
        return None, None, None
    best = min(evals, key=lambda r: r["eval_loss"])
    return "eval_loss", float(best["eval_loss"]), int(best.get("step", 0))


def run_row(name: str, uri: str) -> RunRow | None:
    records = read_metrics_log(layout.metrics_log_uri(uri))
    manifest = _maybe_json(fs.join(uri, layout.ARTIFACT_DIR, layout.MANIFEST))
    if not records and manifest is None:
        return None
    curve = _maybe_json(fs.join(uri, layout.CURVE_JSON)) or {}
    steps = max((int(r.get("step", 0)) for r in records), default=None)
    if manifest is not None:
        best = manifest.get("best", {})
        key = best.get("metric")
        metric = key if key is None or key.startswith("eval_") else f"eval_{key}"
        row = RunRow(
            name,
            "run",
            "complete",
            manifest.get("global_step", steps),
            metric,
            best.get("value"),
            best.get("step"),
            curve.get("verdict"),
            uri,
        )
    else:
        metric, value, step = _best_from_log(records)
        row = RunRow(name, "run", "incomplete (resumable)", steps, metric, value, step, curve.get("verdict"), uri)
    return row


def sweep_row(name: str, uri: str) -> RunRow | None:
    summary = _maybe_json(fs.join(uri, layout.SWEEP_SUMMARY))
    if summary is None:
        if fs.exists(fs.join(uri, layout.TUNER_STATE)):
            return RunRow(name, "sweep", "interrupted (--resume)", None, None, None, None, None, uri)
        return None
    best = next((t for t in summary["trials"] if t["trial_id"] == summary.get("best_trial")), None) or {}
    status = f"complete, {len(summary['trials'])} trials, best {summary.get('best_trial')}"
    return RunRow(
        name,
        "sweep",
        status,
        best.get("steps_run"),
        summary.get("metric"),
        best.get("best_value"),
        best.get("best_step"),
        None,
        uri,
    )


def list_runs(root: str) -> list[RunRow]:
    """Every run and sweep directly under ``root``, newest name last (names sort by job, then hash)."""
    root = fs.normalize(root)
    filesystem, path = fs.filesystem(root)
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise HfrayError(f"hfray runs: cannot list {root}: {exc}") from None
    rows = []
    for info in sorted(entries, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory:
            continue
        uri = fs.join(root, info.base_name)
        row = sweep_row(info.base_name, uri) or run_row(info.base_name, uri)
        if row is not None:
            rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def render(rows: list[RunRow]) -> str:
    header = ["name", "kind", "status", "steps", "metric", "best", "at step", "diagnosis"]
    body = [
        [r.name, r.kind, r.status, _fmt(r.steps), _fmt(r.metric), _fmt(r.best), _fmt(r.best_step), _fmt(r.diagnosis)]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in [header, *body]]
    return "\n".join(lines)
