"""``hfray.config.steps``: a job's optimizer steps as the HF Trainer counts them. The sweep's plan (grace periods,
warm-up, refit) and the workers' speed defaults read this one count; here it is checked against a real Trainer's
``state.max_steps`` and the steps it then took, short accumulation windows and fractional epochs included."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hfray.config import JobConfig, steps_per_epoch, total_steps


def _job(workers: int = 1, **training: Any) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "steps",
            "task": "text-classification",
            "model": {"name_or_path": "m"},
            "data": {"train": "x.csv"},
            "training": training,
            "resources": {"num_workers": workers},
        }
    )


@pytest.mark.parametrize(
    ("rows", "batch", "accumulation", "epochs", "max_steps"),
    [(10, 4, 1, 2.0, -1), (10, 4, 2, 2.5, -1), (9, 2, 4, 1.0, -1), (6, 4, 1, 0.5, -1), (10, 4, 1, 3.0, 5)],
)
def test_total_steps_are_the_steps_the_trainer_then_takes(
    tmp_path: Any, rows: int, batch: int, accumulation: int, epochs: float, max_steps: int
) -> None:
    job = _job(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        max_steps=max_steps,
    )
    ids = torch.randint(5, 90, (rows, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": ids[i], "labels": int(ids[i, 0] > 50)} for i in range(rows)]
    tiny = {"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = BertForSequenceClassification(BertConfig(num_labels=2, intermediate_size=32, **tiny))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        max_steps=max_steps,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == trainer.state.max_steps == total_steps(job, rows)


def test_workers_share_the_rows_and_the_worker_count_can_be_given() -> None:
    job = _job(workers=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=1)
    # 30 rows over 2 workers of 4: 4 batches each, 2 windows of 2; on one worker 8 batches, 4 windows.
    assert steps_per_epoch(job, 30) == 2 and total_steps(job, 30) == 2
    assert steps_per_epoch(job, 30, world_size=1) == 4
    assert steps_per_epoch(job, 0) == 1  # an epoch is at least one step, as the Trainer's
