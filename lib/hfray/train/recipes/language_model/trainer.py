"""The Hugging Face ``Trainer`` of pre-training jobs: perplexity at every evaluation, Ray Data streams.

Imported on workers only (it imports transformers and torch at module level).
"""

from __future__ import annotations

import math
from typing import Any

from torch.utils.data import DataLoader
from transformers import Trainer

# exp() of a loss above this overflows a float; a perplexity that large means "untrained" anyway.
_MAX_LOG_PERPLEXITY = 50.0


def add_perplexity(logs: dict[str, float]) -> None:
    """``<prefix>_perplexity = exp(<prefix>_loss)`` for every evaluation loss in ``logs`` (in place)."""
    for key in [k for k in logs if k.endswith("_loss") and k != "loss"]:
        prefix = key[: -len("_loss")]
        logs[f"{prefix}_perplexity"] = math.exp(min(float(logs[key]), _MAX_LOG_PERPLEXITY))


class LanguageModelTrainer(Trainer):
    """``Trainer`` plus two things.

    * ``log`` adds perplexity next to each evaluation loss. ``Trainer.evaluate`` passes the same
      dict to ``log`` and then to the callbacks' ``on_evaluate``, so the log history, hfray's Ray
      reports and the returned metrics all carry it.
    * With ``train_stream`` (a Ray Data shard), ``get_train_dataloader`` yields its batches as they
      come, as Ray's ``prepare_trainer`` does. The base class would hand an ``IterableDataset`` to
      ``accelerator.prepare``, whose default for those is to read batches on rank 0 and dispatch
      them to the other ranks: every worker would then train on rank 0's shard.
    """

    def __init__(self, *args: Any, train_stream: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_stream = train_stream

    def get_train_dataloader(self) -> DataLoader:
        if self.train_stream is None:
            return super().get_train_dataloader()
        # batch_size=None: Ray Data already batched and collated (masked) each batch.
        return DataLoader(self.train_stream, batch_size=None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        add_perplexity(logs)
        super().log(logs, start_time)
