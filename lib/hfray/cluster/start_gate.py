"""On a running cluster, the Ray side starts while the driver checks the job; workers wait at a gate.

Why: the driver's checks import torch/transformers/datasets, read the data and build ``TrainingArguments``. They
took 3.7 s on 2 CPUs and 10-14 s on the H200 machine, and only after them did the Train controller and the
workers boot and import the same stack, one cold process after another (``bench/results/overhead_*.md``). Here
``fit()`` starts first. Each worker imports its stack and then waits at the gate for the loop config the checks
produce. If a check fails, the gate tells the workers to return without training, and the driver raises the
check's error. No training step, model load or data read happens on a worker before the checks pass.

Only for recipes that allow it (text classification), with ``cluster.overlap_checks`` (on by default;
:func:`hfray.train.driver.run_training` decides). A local cluster that hfray starts boots while the checks run too
(issue 19: 8 s of Ray boot on 2 loaded CPUs, hidden behind the checks); a check that fails meanwhile is raised as
soon as Ray is up, before any worker starts.

The driver holds a :class:`StartGate` and runs the checks with :func:`check_in_background`; each Ray Train worker
calls :func:`wait_at_gate`.

The gate is a key in Ray's GCS key-value store, not an actor: an actor would be one more cold process.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

_NAMESPACE = "hfray_start_gate"
_POLL_S = 0.05


class StartGate:
    """The driver's side of one run's gate: a key the workers poll, opened once with the checked values."""

    def __init__(self, run_name: str) -> None:
        self.key = f"{run_name}/{uuid.uuid4().hex}"  # unique per attempt: a stale value never opens a new one

    def _put(self, message: dict[str, Any]) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(self.key.encode(), json.dumps(message).encode(), overwrite=True, namespace=_NAMESPACE)

    def open(self, values: dict[str, Any]) -> None:
        self._put({"ok": True, "values": values})

    def abort(self) -> None:
        self._put({"ok": False})

    def close(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(self.key.encode(), namespace=_NAMESPACE)


def wait_at_gate(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``loop_config`` completed with the driver's checked values; None: the checks failed, do not train.

    A loop config without a gate is returned as it is. A worker that Ray restarts after a failure finds the gate
    still open (the driver closes it when ``fit`` returns).
    """
    key = loop_config.get("start_gate")
    if not key:
        return loop_config
    from ray.experimental.internal_kv import _internal_kv_get

    while (raw := _internal_kv_get(key.encode(), namespace=_NAMESPACE)) is None:
        time.sleep(_POLL_S)  # the driver's process owns this job: if it dies, Ray ends the workers
    message = json.loads(raw)
    return {**loop_config, **message["values"]} if message["ok"] else None


def check_in_background(
    gate: StartGate, check: Any, ready: threading.Event | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``check()`` (returns the gate's values) in a thread; open the gate with them, or abort it.

    ``ready``: set once the driver is connected to Ray (the checks may start before); the gate waits for it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            values = check()
        except BaseException as exc:  # noqa: BLE001  (re-raised by the driver once fit has returned)
            box["error"] = exc
            if ready is not None:
                ready.wait()
            gate.abort()
            return
        if ready is not None:
            ready.wait()
        gate.open(values)

    thread = threading.Thread(target=run, name="hfray-checks", daemon=True)
    thread.start()
    return thread, box
