"""What a fine-tuning task provides to this recipe's driver checks and worker function.

A task is a :class:`TaskSpec`: its columns and row checks, its labels, its model (checked on the
driver from the config alone, built on each worker), how rows become features, the collator, the
metrics (one ``compute_metrics`` per evaluated split), the Trainer and TrainingArguments classes,
and the ``transformers.pipeline`` name its artifact is loaded with. Everything else (Ray Train,
reporting, checkpoints, resume, export) is the lifecycle's (:mod:`hfray.train.worker`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets

from hfray.config import JobConfig, ModelConfig
from hfray.errors import ModelError
from hfray.model import loading
from hfray.train.arguments import pad_multiple


@dataclass
class Encoded:
    """Features to train and evaluate on, and the metrics of each evaluated split by metric prefix."""

    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]  # "validation", maybe "test"
    metrics: dict[str, Callable[[Any], dict[str, float]]] = field(default_factory=dict)  # "eval", "test"


class TaskSpec:
    name: str = ""
    auto_model: str = ""  # the transformers Auto class of the task's head
    mapping: str = ""  # the model-type mapping of that Auto class (transformers.models.auto.modeling_auto)

    # ------------------------------------------------------------------ data
    def columns(self, job: JobConfig) -> dict[str, str]:
        raise NotImplementedError

    def check_rows(self, ds: datasets.Dataset, job: JobConfig, field: str) -> None:
        raise NotImplementedError

    def labels(self, splits: datasets.DatasetDict, job: JobConfig) -> list[str]:
        return []

    def on_load(self, ds: datasets.Dataset, job: JobConfig, field: str) -> datasets.Dataset:
        """A split as loaded, columns checked, before splitting and fingerprinting (e.g. images kept undecoded)."""
        return ds

    def load_processor(self, job: JobConfig) -> Any:
        """What turns raw inputs into features and is saved with the artifact: the tokenizer (images: an image
        processor)."""
        return loading.load_tokenizer(job.model)

    # ------------------------------------------------------------------ model
    def config_overrides(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        return {"pad_token_id": tokenizer.pad_token_id}

    def check_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        """The model's config (no weights) has this task's head and fits the tokenizer; facts for the log."""
        config = loading.load_config(job.model, **self.config_overrides(job, tokenizer, labels))
        check_head(job.model, config, self.mapping, self.name)
        check_vocab(job.model, config, tokenizer)
        return {"model_type": config.model_type}

    def build_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> Any:
        import transformers

        config = loading.load_config(job.model, **self.config_overrides(job, tokenizer, labels))
        return build_from(job.model, getattr(transformers, self.auto_model), config)

    # ------------------------------------------------------------------ training
    def encode(self, splits: datasets.DatasetDict, tokenizer: Any, job: JobConfig, labels: list[str]) -> Encoded:
        raise NotImplementedError

    def collator(self, tokenizer: Any, model: Any, job: JobConfig) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(job))

    def training_args(self, kwargs: dict[str, Any], job: JobConfig) -> Any:
        from transformers import TrainingArguments

        return TrainingArguments(**kwargs)

    def trainer_class(self) -> type:
        from transformers import Trainer

        return Trainer

    # ------------------------------------------------------------------ artifact
    def pipeline_task(self, job: JobConfig) -> str:
        raise NotImplementedError

    def manifest_extras(self, job: JobConfig) -> dict[str, Any]:
        """Manifest keys of the task (``pipeline_kwargs``, ``generation``; see :mod:`hfray.artifacts.manifest`)."""
        return {}

    def prepare_export(self, model: Any, job: JobConfig) -> None:
        """Last changes to the model before save_pretrained (e.g. generation settings)."""


# ----------------------------------------------------------------------------- helpers


def check_head(cfg: ModelConfig, config: Any, mapping: str, task: str) -> None:
    from transformers.models.auto import modeling_auto

    supported = getattr(modeling_auto, mapping)
    if config.model_type not in supported:
        where = "model.architecture.model_type" if cfg.architecture is not None else "model.name_or_path"
        raise ModelError(f"{where}: {config.model_type!r} has no {task} head in transformers; e.g. bert, roberta")


def check_vocab(cfg: ModelConfig, config: Any, tokenizer: Any) -> None:
    vocab = getattr(config, "vocab_size", None)
    if cfg.architecture is not None and vocab is not None and len(tokenizer) > vocab:
        raise ModelError(
            f"model.architecture.vocab_size {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens"
        )


def check_fast_tokenizer(tokenizer: Any, task: str, why: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model.tokenizer: {task} needs a fast (Rust) tokenizer for {why}")


def build_from(cfg: ModelConfig, auto_cls: Any, config: Any) -> Any:
    """A model with the task's head: from ``model.architecture`` (random) or pretrained weights (new head)."""
    # A fine-tuned checkpoint may come with another label count.
    return loading.model_from_config_or_pretrained(cfg, auto_cls, config, ignore_mismatched_sizes=True)


def map_split(ds: datasets.Dataset, fn: Callable[..., dict[str, Any]], key: str, desc: str) -> datasets.Dataset:
    """``ds.map`` (batched, old columns dropped) with an explicit fingerprint: hashing closures is slow."""
    return ds.map(
        fn,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=hashlib.sha256(f"{ds._fingerprint}|{key}".encode()).hexdigest()[:16],
        desc=desc,
    )


def tokenizer_key(tokenizer: Any, job: JobConfig, section: Any) -> str:
    """What the features depend on, for ``map_split``'s fingerprint."""
    return f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{job.data.max_length}|{section}"
