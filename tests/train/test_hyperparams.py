"""The job's learning rate over a resumed checkpoint's (the PBT exploit fix), on a plain HF Trainer without Ray.

A PBT exploit resumes the donor's checkpoint with a mutated learning rate. ``Trainer.train(resume_from_checkpoint=)``
loads the optimizer and scheduler state after building them from the arguments, so plain HF keeps the donor's
rate; ``JobHyperparamsCallback`` (which every resumed hfray worker adds) makes the new rate win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_BERT

RATE_A, RATE_B = 1e-3, 4e-4  # the checkpoint's rate, the resumed job's rate
SAVED_AT, STEPS = 4, 8


def _trainer(out: Path, rate: float, weight_decay: float, callbacks: list[Any]) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (64, 8), generator=g)
    rows = [{"input_ids": i, "labels": int(i[0] % 2)} for i in ids]
    args = TrainingArguments(
        output_dir=str(out), learning_rate=rate, weight_decay=weight_decay, lr_scheduler_type="linear",
        max_steps=STEPS, per_device_train_batch_size=8, logging_steps=1, save_strategy="steps", save_steps=SAVED_AT,
        report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)


def _rates_after_resume(out: Path, callbacks: list[Any]) -> tuple[dict[int, float], Any]:
    trainer = _trainer(out, RATE_B, 0.05, callbacks)
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{SAVED_AT}"))
    logged = {r["step"]: r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r}
    return logged, trainer.optimizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run at rate A (no weight decay) stopped after its step-4 checkpoint: a fresh Trainer resumes it."""
    from transformers import TrainerCallback

    class StopAfterCheckpoint(TrainerCallback):  # an interrupted run: its schedule still spans STEPS
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            control.should_training_stop = state.global_step >= SAVED_AT

    out = tmp_path_factory.mktemp("lr")
    _trainer(out, RATE_A, 0.0, [StopAfterCheckpoint()]).train()
    assert (out / f"checkpoint-{SAVED_AT}").is_dir()
    return out


def _linear(rate: float, step: int) -> float:
    """HF's linear schedule (no warm-up) at the learning rate logged for ``step``."""
    return rate * (STEPS - (step - 1)) / STEPS


def test_plain_resume_keeps_the_checkpoints_learning_rate(checkpoint: Path, tmp_path: Path) -> None:
    """The control: without hfray's callback, HF resumes at the checkpoint's rate A although the job says B."""
    import shutil

    out = tmp_path / "plain"
    shutil.copytree(checkpoint, out)
    logged, optimizer = _rates_after_resume(out, [])
    assert sorted(logged) == list(range(1, STEPS + 1))  # steps 1..4 come from the checkpoint's trainer state
    assert logged[SAVED_AT] == pytest.approx(_linear(RATE_A, SAVED_AT))
    assert logged[SAVED_AT + 1] == pytest.approx(_linear(RATE_A, SAVED_AT + 1))
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_the_hyperparams_callback_makes_the_jobs_learning_rate_win(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from hfray.train.callbacks.hyperparams import JobHyperparamsCallback

    out = tmp_path / "fixed"
    shutil.copytree(checkpoint, out)
    logged, optimizer = _rates_after_resume(out, [JobHyperparamsCallback()])
    assert sorted(logged) == list(range(1, STEPS + 1))
    # Rate B on the same linear schedule from the resumed step on (A before it); the optimizer really uses it.
    for step, rate in logged.items():
        assert rate == pytest.approx(_linear(RATE_A if step <= SAVED_AT else RATE_B, step)), (step, logged)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(_linear(RATE_B, STEPS + 1), abs=1e-12)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.param_groups[1]["weight_decay"] == 0.0
