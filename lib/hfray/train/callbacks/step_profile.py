"""Where each training step's time goes, by phase: ``HFRAY_STEP_PROFILE=1`` (or a ``.jsonl`` path) in the driver's
environment, forwarded to the workers like ``HFRAY_TIMELINE``.

Phases, between the HF Trainer's callback events (the device synchronised at each on GPU, so a phase holds the GPU
work it launched; this costs throughput, so it is off by default):

* ``between_steps``: ``on_step_end`` -> next ``on_step_begin``: fetching and collating the next batch (the
  DataLoader, a Ray Data stream), the Trainer's logging/saving checks and the other callbacks;
* ``forward_backward``: ``on_step_begin`` -> ``on_pre_optimizer_step`` (gradient clipping included);
* ``optimizer``: ``on_pre_optimizer_step`` -> ``on_optimizer_step``;
* ``after_optimizer``: ``on_optimizer_step`` -> ``on_step_end`` (scheduler, zero_grad, the state's bookkeeping).

Rank 0 prints the mean milliseconds per phase after the warm-up steps at the end of training, and appends the
same record as one JSON line to the path when the variable is one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from transformers import TrainerCallback

ENV = "HFRAY_STEP_PROFILE"
PHASES = ("between_steps", "forward_backward", "optimizer", "after_optimizer")


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class StepProfileCallback(TrainerCallback):
    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.last: float | None = None
        self.step_end: float | None = None

    def _now(self) -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _add(self, phase: str, state: Any) -> None:
        now = self._now()
        if self.last is not None and state.global_step >= self.warmup_steps:
            self.totals[phase] += now - self.last
        self.last = now

    def on_step_begin(self, args, state, control, **kw: Any) -> None:
        now = self._now()
        if self.step_end is not None and state.global_step > self.warmup_steps:
            self.totals["between_steps"] += now - self.step_end
        self.last = now

    def on_pre_optimizer_step(self, args, state, control, **kw: Any) -> None:
        self._add("forward_backward", state)

    def on_optimizer_step(self, args, state, control, **kw: Any) -> None:
        self._add("optimizer", state)

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        self._add("after_optimizer", state)
        if state.global_step > self.warmup_steps:
            self.steps += 1
        self.step_end = self.last

    def summary(self) -> dict[str, Any]:
        n = max(1, self.steps)
        ms = {phase: round(1000 * total / n, 2) for phase, total in self.totals.items()}
        return {"steps": self.steps, "ms_per_step": ms, "total_ms": round(sum(ms.values()), 2)}

    def on_train_end(self, args, state, control, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        record = self.summary()
        print(f"[hfray] step profile: {json.dumps(record)}", flush=True)
        target = os.environ.get(ENV, "")
        if target.endswith(".jsonl"):
            with open(target, "a") as f:
                f.write(json.dumps(record) + "\n")
