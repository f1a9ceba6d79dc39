"""What the device does during training steps: ``HFRAY_TORCH_PROFILE=/some/dir`` in the driver's environment
(forwarded to the workers like ``HFRAY_TIMELINE``) records a few steady steps of rank 0 with ``torch.profiler``.

Unlike ``HFRAY_STEP_PROFILE`` it synchronises only at the window's two ends, so the steps run as they do unprofiled
(the profiler's own cost aside) and the record answers: is the device busy for the whole step (then the kernels are
the cost), or does it wait for the host (launch overhead, host syncs such as ``.item()``)? Written to the directory:

* ``summary.json``: the window's wall ms per step, the device's busy ms per step (the union of its kernels' and
  copies' intervals), their ratio, host syncs per step (``aten::_local_scalar_dense``: ``.item()``/``bool(tensor)``;
  ``aten::nonzero``: boolean indexing) and the kernels and host ops that take the most time, per step;
* ``ops.txt``: the profiler's table by device time; ``trace.json.gz``: the Chrome/Perfetto trace.

``bench/throughput_bench.py`` (variant ``tprofile``) and ``bench/throughput_bare.py`` (``--torch-profile``) write the
same summary, so hfray's step and the bare step compare kernel by kernel.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

ENV = "HFRAY_TORCH_PROFILE"
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def target() -> Path | None:
    value = os.environ.get(ENV, "")
    return Path(value) if value not in ("", "0") else None


class Window:
    """A ``torch.profiler`` recording of ``steps`` steps: :meth:`start` before the first, :meth:`stop` after it."""

    def __init__(self, out: Path, steps: int) -> None:
        self.out, self.steps = out, steps
        self.prof: Any = None
        self.t0 = self.wall = 0.0

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        _sync()
        self.prof = profile(activities=activities)
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        _sync()
        self.wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)

    def write(self) -> dict[str, Any]:
        """The files (after training: exporting the trace takes seconds, which would count as a slow step)."""
        averages = self.prof.key_averages()  # once: it walks every event of the window
        record = summarize(self.prof.events(), averages, self.steps, self.wall)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.json").write_text(json.dumps(record, indent=1))
        (self.out / "ops.txt").write_text(averages.table(sort_by="self_device_time_total", row_limit=60))
        self.prof.export_chrome_trace(str(self.out / "trace.json.gz"))  # torch gzips a ".gz" path itself
        return record


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summarize(events: Any, averages: Any, steps: int, wall_s: float, top: int = 20) -> dict[str, Any]:
    """Per step: wall ms, the device's busy ms (kernels and copies, overlaps counted once), host syncs, the top
    kernels by device time and host ops by self CPU time."""
    from torch.autograd import DeviceType

    spans, kernels = [], {}
    for evt in events:
        if evt.device_type != DeviceType.CUDA:
            continue
        start, end = evt.time_range.start, evt.time_range.end
        spans.append((start, end))
        total, count = kernels.get(evt.name, (0.0, 0))
        kernels[evt.name] = (total + end - start, count + 1)
    busy_us = _union(spans)
    ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    calls = {e.key: e.count for e in averages if e.key in SYNC_OPS}
    per = 1.0 / max(1, steps)
    return {
        "steps": steps,
        "wall_ms": round(1000 * wall_s * per, 2),
        "device_busy_ms": round(busy_us / 1000 * per, 2),
        "device_busy_share": round(busy_us / 1e6 / wall_s, 3) if wall_s else None,
        "syncs_per_step": {k: round(v * per, 1) for k, v in calls.items()},
        "device_kernels": len(spans) * per,
        "top_kernels_ms": [
            [name[:100], round(t / 1000 * per, 3), round(n * per, 1)]
            for name, (t, n) in sorted(kernels.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
        ],
        "top_host_ops_ms": [[e.key[:100], round(e.self_cpu_time_total / 1000 * per, 3), e.count * per] for e in ops],
    }


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if s > end:
            total, end = total + e - s, e
        elif e > end:
            total, end = total + e - end, e
    return total


class TorchProfileCallback(TrainerCallback):
    """Rank 0 records the ``steps`` steps after step ``first`` (past the warm-up and any compilation), end to end:
    from one ``on_step_end`` to another, so each recorded step includes fetching its batch."""

    def __init__(self, out: Path, first: int = 12, steps: int = 5) -> None:
        self.first = first
        self.window = Window(out, steps)
        self.on = self.done = False

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        if state.global_step == self.first and not self.on:
            self.window.start()
            self.on = True
        elif self.on and state.global_step == self.first + self.window.steps:
            self.window.stop()
            self.on, self.done = False, True

    def on_train_end(self, args, state, control, **kw: Any) -> None:
        if self.done:
            record = self.window.write()
            print(f"[hfray] torch profile: {json.dumps({k: v for k, v in record.items() if 'top' not in k})}")
