"""Per-case phase table of a ``bench/startup_bench.py`` result: the seconds since submit at which each landmark of
the start-up was reached, one row per case, and the medians per runner.

    python bench/startup_phases.py /tmp/startup/startup.json
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

# (column, phase, role): the first mark of that phase and role; role None: any role but the driver's first.
LANDMARKS = [
    ("checks done", "driver_preflight", "driver"),
    ("Ray connected", "driver_ray_connected", "driver"),
    ("fit() called", "driver_trainer_built", "driver"),
    ("worker process", "process_start", "rank0"),
    ("worker prewarmed", "worker_prewarmed", "prewarm"),
    ("train fn starts", "worker_fn_start", "rank0"),
    ("fn imports done", "worker_imports", "rank0"),
    ("Trainer built", "worker_trainer_built", "rank0"),
    ("first step end", "first_step_end", "rank0"),
]


def landmarks(row: dict[str, Any]) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for column, phase, role in LANDMARKS:
        times = [m["t_s"] for m in row.get("timeline", []) if m["phase"] == phase and m["role"] == role]
        found[column] = min(times) if times else None
    if row["runner"] == "plain":
        found["first step end"] = row.get("submit_to_first_step_end_s")
    return found


def table(result: dict[str, Any]) -> str:
    cols = [c for c, _, _ in LANDMARKS]
    lines = ["| case | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    per_runner: dict[str, list[dict[str, float | None]]] = {}
    for row in result["rows"]:
        marks = landmarks(row)
        per_runner.setdefault(row["runner"], []).append(marks)
        cells = ["" if marks[c] is None else f"{marks[c]:.1f}" for c in cols]
        lines.append(f"| {row['runner']} #{row['repeat']} | " + " | ".join(cells) + " |")
    for runner, rows in per_runner.items():
        cells = []
        for c in cols:
            values = [r[c] for r in rows if r[c] is not None]
            cells.append(f"**{statistics.median(values):.1f}**" if values else "")
        lines.append(f"| {runner} median | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
