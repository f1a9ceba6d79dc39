"""Start-up timeline of a run: wall-clock marks from the driver and every worker, when asked for.

``HFRAY_TIMELINE=/path/file.jsonl`` in the driver's environment turns it on: the driver forwards the
variable to the job's Ray processes (``forwarded_env``), and every :func:`mark` appends one JSON line
(phase, wall time, pid, role) to that file. Unset, :func:`mark` costs one dict lookup. The marks
cover process start to the first optimizer step (``bench/overhead_bench.py`` turns them into a phase
table); a shared file works because local clusters and one-node GPU machines share the filesystem.

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
    (``HFRAY_STEP_PROFILE``, hfray.train.callbacks.step_profile); empty when off."""
    return {key: os.environ[key] for key in (ENV, "HFRAY_STEP_PROFILE") if os.environ.get(key)}


def _role() -> str:
    """``driver`` or ``rank<N>`` inside a Ray Train worker (looked up lazily, only when marking)."""
    train = sys.modules.get("ray.train")  # never imported here: a plain script must not pay for Ray
    if train is None:
        return "driver"
    try:
        return f"rank{train.get_context().get_world_rank()}"
    except Exception:  # not inside a Train worker
        return "driver"


def mark(phase: str, role: str | None = None, at: float | None = None, **extra: Any) -> None:
    """Record that ``phase`` ended now (or at ``at``, a ``time.time()`` value); no-op when off."""
    path = os.environ.get(ENV)
    if not path:
        return
    record = {"phase": phase, "t": at if at is not None else time.time(), "pid": os.getpid()}
    record["role"] = role or _role()
    record.update(extra)
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
    if _PROCESS_MARKED or not enabled():
        return
    _PROCESS_MARKED = True
    started = process_started_at()
    if started is not None:
        mark("process_start", role=role, at=started)


_PROCESS_MARKED = False


def read(path: str) -> list[dict[str, Any]]:
    """Every mark of a timeline file, in time order."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["t"])
