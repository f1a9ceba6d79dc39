"""Causal LMs for the TRL recipes (sft, dpo, grpo): the chat tokenizer and the model, on the driver and workers."""

from __future__ import annotations

import os
from typing import Any

from hfray.config import JobConfig
from hfray.errors import ModelError
from hfray.model import language_model, loading, peft


def load_chat_tokenizer(job: JobConfig) -> Any:
    """The job's tokenizer, with ``trl.chat_template`` (a Jinja file or a tokenizer dir) when given."""
    from transformers import AutoTokenizer

    tokenizer = loading.load_tokenizer(job.model)
    source = job.trl.chat_template if job.trl else None
    if source:
        path = os.path.expanduser(source)
        if os.path.isfile(path):
            with open(path) as f:
                tokenizer.chat_template = f.read()
        elif os.path.isdir(path):
            tokenizer.chat_template = AutoTokenizer.from_pretrained(path).chat_template
        else:
            raise ModelError(f"trl.chat_template: {source} is neither a Jinja file nor a tokenizer dir")
    return tokenizer


def build_causal_lm(job: JobConfig, tokenizer: Any) -> Any:
    """A causal LM: from ``model.architecture`` (random init) or pretrained weights (QLoRA: quantized)."""
    from transformers import AutoModelForCausalLM

    config = loading.load_config(job.model, **language_model.lm_overrides(tokenizer, job.model.architecture or {}))
    if job.model.architecture is not None:
        return AutoModelForCausalLM.from_config(config, **loading.attention_kwargs(job.model))
    return AutoModelForCausalLM.from_pretrained(
        job.model.name_or_path,
        config=config,
        revision=job.model.revision,
        trust_remote_code=job.model.trust_remote_code,
        **loading.attention_kwargs(job.model),
        **peft.quantized_load_kwargs(job),
    )
