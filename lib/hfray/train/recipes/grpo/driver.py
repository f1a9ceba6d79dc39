"""grpo on the driver: prompts and reward columns, every reward (its function, its reward model), the chat
template and the model config, before Ray starts."""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.config.rewards import reward_names
from hfray.errors import ModelError
from hfray.model import language_model, loading, peft
from hfray.model.causal_lm import load_chat_tokenizer
from hfray.train.arguments import check_training_arguments
from hfray.train.driver import resolve_sources
from hfray.train.recipes.grpo.data import load_grpo_splits


def preflight(job: JobConfig, full: bool = True) -> tuple[JobConfig, dict[str, Any]]:
    """Config, data columns, rewards, tokenizer + chat template and model config, before Ray starts."""
    from trl.data_utils import is_conversational

    check_training_arguments(job)
    job = resolve_sources(job)
    splits = load_grpo_splits(job, check=True)
    tokenizer = load_chat_tokenizer(job)
    chat = bool(len(splits["train"])) and is_conversational(splits["train"][0])
    if chat and not tokenizer.chat_template:
        raise ModelError(
            f"trl.chat_template: the prompts are chat turns but the tokenizer {job.model.tokenizer_source} has no "
            "chat template; give a Jinja file or a tokenizer dir that has one"
        )
    config = loading.load_config(job.model, **language_model.lm_overrides(tokenizer, job.model.architecture or {}))
    peft.check_peft(job, config.model_type)
    assert job.trl is not None
    info = {
        "rows": {k: len(v) for k, v in splits.items()},
        "rewards": reward_names(job.trl.rewards),
        "model_type": config.model_type,
        "chat": chat,
    }
    return job, info


def describe(job: JobConfig, info: dict[str, Any]) -> str:
    return "grpo, " + ", ".join(f"{k} {v}" for k, v in info.items())


def loop_config(job: JobConfig, info: dict[str, Any]) -> dict[str, Any]:
    return {}
