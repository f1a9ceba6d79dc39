"""Tokenizers, model configs and task models: pretrained (local dir, ``builtin:``, Hub id) or built from a config.

The driver loads tokenizers and configs (no weights) to check a job before Ray starts; each worker builds the
model. Language models for pre-training are :mod:`hfray.model.language_model`.
"""

from __future__ import annotations

import os
from typing import Any

from hfray.assets import PREFIX
from hfray.config import ModelConfig
from hfray.errors import ModelError
from hfray.model.builtin import resolve_model


def absolute_model_source(source: str | None) -> str | None:
    """Resolve builtin names and relative dirs on the driver; workers run elsewhere."""
    if source is None:
        return None
    if source.startswith(PREFIX):
        return resolve_model(source)
    expanded = os.path.expanduser(source)
    if source.startswith(("/", "./", "../", "~")) or os.path.isdir(expanded):
        return os.path.abspath(expanded)
    return source


def _hub_failure(field: str, source: str, exc: Exception) -> ModelError:
    if source.startswith(("/", ".", "~")) or os.path.sep in source.strip("/").split("/", 1)[-1]:
        return ModelError(f"{field}: directory not found or not a model: {source} ({type(exc).__name__})")
    return ModelError(
        f"{field}: {source!r} is not a local directory and loading it from the Hugging Face Hub failed "
        f"(this machine may be offline: use a local dir or 'builtin:all-MiniLM-L6-v2'): "
        f"{type(exc).__name__}: {str(exc)[:300]}"
    )


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    source = cfg.tokenizer_source
    field = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    if source.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise ModelError(f"{field}: directory not found: {source}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as exc:
        raise _hub_failure(field, source, exc) from None
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers (GPT-2, Llama) ship without a pad token; padding with EOS is standard.
        if tokenizer.eos_token is None:
            raise ModelError(f"{field}: the tokenizer has neither a pad nor an eos token; add one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_architecture_config(cfg: ModelConfig, **overrides: Any) -> Any:
    from transformers import AutoConfig

    arch = dict(cfg.architecture or {})
    model_type = arch.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **arch, **overrides)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model.architecture: cannot build a {model_type!r} config: {exc}") from None


def load_config(cfg: ModelConfig, **overrides: Any) -> Any:
    from transformers import AutoConfig

    if cfg.architecture is not None:
        return build_architecture_config(cfg, **overrides)
    source = cfg.name_or_path
    assert source is not None
    if source.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise ModelError(f"model.name_or_path: directory not found: {source}")
    try:
        return AutoConfig.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **overrides
        )
    except Exception as exc:
        raise _hub_failure("model.name_or_path", source, exc) from None


def classification_overrides(labels: list[str], tokenizer: Any) -> dict[str, Any]:
    """The config of a classifier over ``labels`` (one class index a row or token). ``problem_type`` is what a
    sequence or image classifier's forward would set on its first labelled batch; set before training, Dynamo does not
    trace a compiled whole model again at the second step (it guards on the field: one full compile saved)."""
    return {
        "problem_type": "single_label_classification",
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_classifier(cfg: ModelConfig, labels: list[str], tokenizer: Any, **load_kwargs: Any) -> Any:
    """A sequence classifier with the job's labels; a pretrained body gets a fresh head.

    ``load_kwargs`` go to ``from_pretrained`` (e.g. a QLoRA base's quantization config)."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(cfg, **classification_overrides(labels, tokenizer))
    if cfg.architecture is not None and len(tokenizer) > config.vocab_size:
        raise ModelError(
            f"model.architecture.vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
        )
    # A fine-tuned checkpoint may come with another label count: its head is replaced.
    return model_from_config_or_pretrained(
        cfg, AutoModelForSequenceClassification, config, ignore_mismatched_sizes=True, **load_kwargs
    )


def attention_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``attn_implementation`` for ``from_config`` / ``from_pretrained`` when ``model.attn_implementation`` is set;
    nothing otherwise, so that transformers keeps its own default. ``varlen`` is registered with transformers here,
    in the process that builds the model."""
    if cfg.attn_implementation == "varlen":
        from hfray.model import varlen

        return {"attn_implementation": varlen.register()}
    return {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}


def model_from_config_or_pretrained(
    cfg: ModelConfig, auto_cls: Any, config: Any, ignore_mismatched_sizes: bool = False, **load_kwargs: Any
) -> Any:
    """``auto_cls`` randomly initialised from ``model.architecture``, or from pretrained weights.

    v5 task heads take **kwargs, so the Trainer passes them num_items_in_batch and multiplies the loss by
    the world size (right for token-averaged LM losses), but these heads average their loss per batch
    themselves: under DDP the loss and gradients would come out world_size times too large. Every model
    hfray trains opts out of that path.
    """
    if cfg.architecture is not None:
        model = auto_cls.from_config(config, **attention_kwargs(cfg))
    else:
        model = auto_cls.from_pretrained(
            cfg.name_or_path,
            config=config,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            **attention_kwargs(cfg),
            **load_kwargs,
        )
    model.accepts_loss_kwargs = False
    return model
