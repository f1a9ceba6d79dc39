"""``hfray.train.worker.train`` trains with the setup's objects frozen out of the garbage collector's full collections
(``hfray.train.process.frozen_setup``): what training makes is still collected, and the collector gets everything back
after (a reused process, an in-process sweep trial, frees the run it no longer holds)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hfray.train.worker import Attempt, train


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


class _Watch(TrainerCallback):
    def __init__(self) -> None:
        self.frozen: list[int] = []
        self.freed: list[bool] = []
        self.losses: list[float] = []
        self.held: _Node | None = _Node()  # a cycle alive when training starts: frozen with the setup
        self.setup = weakref.ref(self.held)
        self.setup_kept = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.frozen.append(gc.get_freeze_count())
        if self.held is not None:  # the setup's cycle becomes garbage mid-training: frozen, the collector skips it
            self.held = None
            gc.collect()
            self.setup_kept = self.setup() is not None
        garbage = weakref.ref(_Node())  # made while training, unreachable at once
        gc.collect()
        self.freed.append(garbage() is None)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def test_training_runs_with_the_setup_frozen_and_still_collects_what_it_makes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    model = BertForSequenceClassification(BertConfig(vocab_size=50, num_labels=2, **tiny))
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 50, (8,), generator=g), "labels": i % 2} for i in range(32)]
    rows = [{**r, "input_ids": torch.cat([r["input_ids"][:-1], torch.tensor([r["labels"] + 1])])} for r in rows]
    args = TrainingArguments(
        str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=5e-3, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True,
    )  # fmt: skip
    watch = _Watch()
    train(Trainer(model=model, args=args, train_dataset=rows, callbacks=[watch]), Attempt(None, 0))
    assert len(watch.frozen) == 12 and min(watch.frozen) > 1000, watch.frozen[:3]  # the setup's objects, frozen
    assert watch.setup_kept  # a full collection while training does not walk them
    assert all(watch.freed)  # garbage made while training is collected as before
    assert gc.get_freeze_count() == 0  # given back after
    gc.collect()
    assert watch.setup() is None  # and collected once back
    assert watch.losses[-1] < watch.losses[0]  # it trained
