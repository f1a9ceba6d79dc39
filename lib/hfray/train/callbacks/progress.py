"""The progress bar of a run: rank 0's optimizer steps, drawn on the driver's console by Ray's ``tqdm_ray``.

An HF Trainer callback on the workers (rank 0 draws); the driver's console shows the bar.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class ProgressBarCallback(TrainerCallback):
    """Rank 0's optimizer steps as a progress bar on the driver's console (Ray's ``tqdm_ray``: one bar per
    run, drawn by the driver, instead of tqdm's carriage returns mangled in forwarded worker logs)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero and state.max_steps:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(desc=self.description, total=state.max_steps, unit="step")
            self.bar.update(state.global_step)  # a resumed run starts where its checkpoint left off

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
