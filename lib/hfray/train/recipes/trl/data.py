"""TRL data on the driver and the workers alike: the job's columns renamed to TRL's, and the chat tokenizer.

Columns are renamed to the names TRL's trainers expect (``messages``; ``prompt``/``completion``; ``text``;
``prompt``/``chosen``/``rejected``), so any dataset layout works without editing the data.
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig, TrlSection
from hfray.errors import DataError
from hfray.model.causal_lm import load_chat_tokenizer

__all__ = ["is_conversational", "load_chat_tokenizer", "load_trl_splits", "trl_columns"]


def _sft_columns(trl: TrlSection, fmt: str, text_column: str) -> dict[str, str]:
    """Job column -> the column TRL expects, for one sft data format."""
    if fmt == "messages":
        return {trl.messages_column: "messages"}
    if fmt == "prompt-completion":
        return {trl.prompt_column: "prompt", trl.completion_column: "completion"}
    return {text_column: "text"}


def trl_columns(job: JobConfig, present: list[str]) -> dict[str, str]:
    """The job's columns renamed to TRL's names; ``auto`` picks the first sft format whose columns exist."""
    trl = job.trl
    assert trl is not None
    if job.task == "dpo":
        return {trl.prompt_column: "prompt", trl.chosen_column: "chosen", trl.rejected_column: "rejected"}
    formats = ["messages", "prompt-completion", "text"] if trl.format == "auto" else [trl.format]
    for fmt in formats:
        mapping = _sft_columns(trl, fmt, job.data.text_column)
        if all(col in present for col in mapping):
            return mapping
    return _sft_columns(trl, formats[0], job.data.text_column)


def load_trl_splits(job: JobConfig) -> dict[str, Any]:
    """{'train', 'validation'} datasets with TRL's column names, subsampled as the job says."""
    from hfray.data.sources import load_source

    cfg = job.data
    train = load_source(cfg.train, cfg, "data.train")
    if cfg.validation:
        held = load_source(cfg.validation, cfg, "data.validation")
    else:
        parts = train.train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed)
        train, held = parts["train"], parts["test"]
    splits = {"train": train, "validation": held}
    out = {}
    for name, ds in splits.items():
        field = f"data.{name}" if name == "train" or cfg.validation else "data.train"
        mapping = trl_columns(job, ds.column_names)
        missing = [col for col in mapping if col not in ds.column_names]
        if missing:
            raise DataError(
                f"{field}: columns {missing} not found (have {ds.column_names}); set the trl.*_column keys"
                + (" or trl.format" if job.task == "sft" else "")
            )
        ds = ds.select_columns(list(mapping)).rename_columns({k: v for k, v in mapping.items() if k != v})
        limit = cfg.max_train_samples if name == "train" else cfg.max_eval_samples
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        out[name] = ds
    return out


def is_conversational(splits: dict[str, Any]) -> bool:
    from trl.data_utils import is_conversational

    return bool(len(splits["train"])) and is_conversational(splits["train"][0])
