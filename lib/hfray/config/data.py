"""``data:``: where the data is, its columns and labels, the validation split and subsampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hfray.config.section import Section


class DataConfig(Section):
    train: str = Field(description="File, glob, directory, 'builtin:NAME' or a Hub dataset id.")
    validation: str | None = Field(None, description="If unset, a seeded split of train.")
    test: str | None = None
    format: Literal["auto", "csv", "json", "parquet", "text", "arrow"] = "auto"
    hub_config: str | None = Field(None, description="Config name of a Hub dataset.")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of train.")
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 42
    max_length: int = Field(128, ge=8, le=32768)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    cache_tokenized: bool = Field(
        True,
        description="Keep tokenized data under <storage.path>/.hfray_cache/tokenized (local paths), keyed by the "
        "data, tokenizer and max_length: later runs and sweep trials on the same data skip tokenizing.",
    )
