"""Start-up timeline of a run: wall-clock marks from the driver and every worker.

Every :func:`mark` is kept in its process (a list append), and rank 0 writes the run's phases (the driver's
marks, handed over in the loop config, then its own) into the artifact's manifest (:func:`phases`), so every
run shows where its start-up went. ``HFRAY_TIMELINE=/path/file.jsonl`` in the driver's environment also writes
them to a file: the driver forwards the variable to the job's Ray processes (``forwarded_env``), and every
:func:`mark` appends one JSON line (phase, wall time, pid, role) to that file. The marks cover process start
to the first optimizer step (``bench/overhead_bench.py`` turns them into a phase table); a shared file works
because local clusters and one-node GPU machines share the filesystem.

Import-light on purpose (stdlib only): the driver marks phases before it imports Ray or transformers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

ENV = "HFRAY_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def forwarded_env() -> dict[str, str]:
    """The variables the job's Ray processes need to write their marks too, and the per-step phase profile
    (``HFRAY_STEP_PROFILE``, hfray.train.callbacks.step_profile) and the device profile (``HFRAY_TORCH_PROFILE``,
    hfray.train.callbacks.torch_profile); empty when off."""
    keys = (ENV, "HFRAY_STEP_PROFILE", "HFRAY_TORCH_PROFILE")
    return {key: os.environ[key] for key in keys if os.environ.get(key)}


def _role() -> tuple[str, str | None]:
    """``driver`` or ``rank<N>`` inside a Ray Train worker, with the Train run's name there (looked up lazily,
    only when marking): a sweep's marks from several trials in one file are told apart by their run."""
    train = sys.modules.get("ray.train")  # never imported here: a plain script must not pay for Ray
    if train is None:
        return "driver", None
    # An in-process run (hfray.train.local) answers through hfray.train.session: Ray's refuses a Tune trial's process.
    session = sys.modules.get("hfray.train.session")
    try:
        context = (session.get_context if session is not None else train.get_context)()
        return f"rank{context.get_world_rank()}", context.get_experiment_name()
    except Exception:  # not inside a Train worker
        return "driver", None


# A new run in a process that ran one before (a notebook, a reused trial actor) starts its marks here.
RUN_STARTS = ("driver_run_start", "trial_start")


def mark(phase: str, role: str | None = None, at: float | None = None, **extra: Any) -> None:
    """Record that ``phase`` ended now (or at ``at``, a ``time.time()`` value), in this process and, when
    ``HFRAY_TIMELINE`` is set, in its file."""
    record = {"phase": phase, "t": at if at is not None else time.time(), "pid": os.getpid()}
    found, run = _role() if role is None else (role, None)
    record["role"] = found
    if run:
        record["run"] = run
    record.update(extra)
    _LOCAL.append(record)
    path = os.environ.get(ENV)
    if not path:
        return
    # One short append per line: O_APPEND writes of this size do not interleave between processes.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def process_started_at() -> float | None:
    """When this process started (wall clock), from /proc: measures what its imports cost before any mark."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # psutil ships with Ray; without it the phase is simply not recorded
        return None


def mark_process_start(role: str | None = None) -> None:
    """A ``process_start`` mark backdated to the process's creation (once per process)."""
    global _PROCESS_MARKED
    if _PROCESS_MARKED:
        return
    _PROCESS_MARKED = True
    started = process_started_at()
    if started is not None:
        mark("process_start", role=role, at=started)


_PROCESS_MARKED = False
_LOCAL: list[dict[str, Any]] = []


def run_marks() -> list[dict[str, Any]]:
    """This process's marks of its current run: since its latest run start (:data:`RUN_STARTS`); for the first
    run of a process that marked its start (the CLI, a trial actor), since that; without a run start, all."""
    starts = [i for i, m in enumerate(_LOCAL) if m["phase"] in RUN_STARTS]
    first = starts[-1] if starts else 0
    if len(starts) == 1:
        first = next((i for i, m in enumerate(_LOCAL[:first]) if m["phase"] == "process_start"), first)
    return [{k: v for k, v in m.items() if k in ("phase", "t", "role")} for m in _LOCAL[first:]]


def phases(marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Marks as the manifest's phases: in time order, seconds since the first (``s``) and since the one before
    (``dt``). Processes on other nodes are compared by wall clock."""
    ordered = sorted(marks, key=lambda m: m["t"])
    if not ordered:
        return []
    start, before = ordered[0]["t"], ordered[0]["t"]
    rows = []
    for m in ordered:
        rows.append(
            {"phase": m["phase"], "role": m["role"], "s": round(m["t"] - start, 3), "dt": round(m["t"] - before, 3)}
        )
        before = m["t"]
    return rows


def read(path: str) -> list[dict[str, Any]]:
    """Every mark of a timeline file, in time order."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["t"])
