"""A job's splits: loaded and checked, validation split off when none is given, subsampled, fingerprinted.

Shared by every task that reads rows with ``datasets`` (text classification and the fine-tuning tasks). The
driver prepares the data once before Ray starts; each worker prepares it again and compares fingerprints
(:func:`fingerprint`), so a node that sees different files fails loudly instead of training on something else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hfray.config import DataConfig
from hfray.data.sources import load_source
from hfray.errors import DataError

if TYPE_CHECKING:
    import datasets  # imported where data is loaded: the recipe's driver module is on the driver's start-up path

SPLIT_FIELDS = ("train", "validation", "test")


@dataclass
class PreparedData:
    splits: datasets.DatasetDict  # train, validation and maybe test; labels as strings still
    labels: list[str]
    fingerprint: str

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.splits.items()}


def subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random ``limit`` rows of ``ds`` (all of them when it has no more)."""
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def fingerprint(splits: datasets.DatasetDict, columns: list[str]) -> str:
    """A hash of the values in order, independent of file format, chunking and Arrow string width."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        for batch in splits[name].select_columns(columns).iter(batch_size=10_000):
            digest.update(json.dumps([batch[c] for c in columns], default=str).encode())
    return digest.hexdigest()[:16]


def load_splits(
    cfg: DataConfig, on_load: Callable[[datasets.Dataset, str], datasets.Dataset]
) -> dict[str, datasets.Dataset]:
    """Every split the job names, through ``on_load(ds, field)`` (checks; may select columns), then a seeded
    validation split off train if the job gives none, then ``data.max_train_samples`` / ``max_eval_samples``."""
    loaded = {}
    for name in SPLIT_FIELDS:
        source = getattr(cfg, name)
        if source is not None:
            loaded[name] = on_load(load_source(source, cfg, f"data.{name}"), f"data.{name}")
    if "validation" not in loaded:
        if len(loaded["train"]) < 2:
            raise DataError("data.train: need at least 2 rows to split off a validation set")
        parts = loaded["train"].train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed)
        loaded["train"], loaded["validation"] = parts["train"], parts["test"]
    loaded["train"] = subsample(loaded["train"], cfg.max_train_samples, cfg.split_seed)
    for name in ("validation", "test"):
        if name in loaded:
            loaded[name] = subsample(loaded[name], cfg.max_eval_samples, cfg.split_seed)
    return loaded
