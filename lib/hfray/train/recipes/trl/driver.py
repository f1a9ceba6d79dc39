"""TRL (sft, dpo) on the driver: data columns, tokenizer and chat template, model config, before Ray starts."""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.errors import ModelError
from hfray.model import language_model, loading, peft
from hfray.train.arguments import check_training_arguments
from hfray.train.driver import resolve_sources
from hfray.train.recipes.trl.data import is_conversational, load_chat_tokenizer, load_trl_splits


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, dict[str, Any]]:
    """Config, data columns, tokenizer + chat template and model config, before Ray starts."""
    check_training_arguments(job)
    job = resolve_sources(job)
    splits = load_trl_splits(job)
    tokenizer = load_chat_tokenizer(job)
    if is_conversational(splits) and not tokenizer.chat_template:
        raise ModelError(
            f"trl.chat_template: the data is chat turns but the tokenizer {job.model.tokenizer_source} has no chat "
            "template; give a Jinja file or a tokenizer dir that has one"
        )
    config = loading.load_config(job.model, **language_model.lm_overrides(tokenizer, job.model.architecture or {}))
    peft.check_peft(job, config.model_type)
    info = {
        "rows": {k: len(v) for k, v in splits.items()},
        "columns": splits["train"].column_names,
        "model_type": config.model_type,
        "chat": is_conversational(splits),
    }
    return job, info


def describe(job: JobConfig, info: dict[str, Any]) -> str:
    return f"{job.task}, " + ", ".join(f"{k} {v}" for k, v in info.items())


def loop_config(job: JobConfig, info: dict[str, Any]) -> dict[str, Any]:
    return {}
