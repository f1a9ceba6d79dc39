"""Tokenizers and models: pretrained (local dir, ``builtin:``, Hub id) or built from a config."""

from __future__ import annotations

import os
from typing import Any

from hfray.assets import PREFIX, resolve_model
from hfray.config import ModelConfig
from hfray.errors import ModelError


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
    return {
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
        model = auto_cls.from_config(config)
    else:
        model = auto_cls.from_pretrained(
            cfg.name_or_path,
            config=config,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            **load_kwargs,
        )
    model.accepts_loss_kwargs = False
    return model


# ----------------------------------------------------------------------------- language models (pre-training)

# RoBERTa-family position ids start after the padding index, so blocks need that many extra positions.
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer")


def lm_overrides(tokenizer: Any, arch: dict[str, Any]) -> dict[str, Any]:
    """Config values a language model takes from its tokenizer (vocab size unless the job sets it)."""
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id", None) for role in ("pad", "bos", "eos")}
    found = {key: value for key, value in ids.items() if value is not None and key not in arch}
    if "vocab_size" not in arch:
        found["vocab_size"] = len(tokenizer)
    return found


def language_model_config(cfg: ModelConfig, task: str, tokenizer: Any, block_size: int) -> Any:
    """The model config of a pre-training job, checked against the tokenizer and the block size."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = load_config(cfg, **lm_overrides(tokenizer, cfg.architecture or {}))
    supported = MODEL_FOR_MASKED_LM_MAPPING_NAMES if task == "masked-lm" else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    field = "model.architecture.model_type" if cfg.architecture is not None else "model.name_or_path"
    if config.model_type not in supported:
        raise ModelError(
            f"{field}: {config.model_type!r} has no {task} head; e.g. bert, roberta (masked-lm), gpt2, llama"
        )
    if len(tokenizer) > config.vocab_size:
        raise ModelError(
            f"model.architecture.vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}"
        )
    positions = getattr(config, "max_position_embeddings", None)
    offset = (config.pad_token_id or 0) + 1 if config.model_type in _POSITION_OFFSET_MODELS else 0
    if positions is not None and positions < block_size + offset:
        raise ModelError(
            f"model.architecture.max_position_embeddings {positions} is too small for lm.block_size {block_size}"
            + (f" (+{offset}: {config.model_type} positions start after the padding index)" if offset else "")
        )
    return config


def build_language_model(cfg: ModelConfig, task: str, tokenizer: Any, block_size: int) -> Any:
    """A masked or causal LM: randomly initialised from ``model.architecture``, or pretrained weights."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    config = language_model_config(cfg, task, tokenizer, block_size)
    auto = AutoModelForMaskedLM if task == "masked-lm" else AutoModelForCausalLM
    # BERT's MLM head has the loss shape of model_from_config_or_pretrained's note; packed causal blocks have the
    # same label count in every batch, so the per-batch mean averaged by DDP is the exact token average; MLM
    # mask counts vary by a few percent between batches, as in BERT's training.
    return model_from_config_or_pretrained(cfg, auto, config)


def mlm_loss_on_masked_only(model: Any) -> bool:
    """Make a masked LM run its output head on masked positions only; False if its layout is not supported.

    The stock forward projects every position onto the vocabulary (batch x block x vocab logits) and then
    ignores the ~85% that carry no label. Here the encoder runs in full, the head (BERT's ``cls``,
    RoBERTa's ``lm_head``: the one child module that holds the output embeddings) sees only labelled
    positions, and the loss is the same mean cross-entropy. The forward is replaced on the instance, so
    DDP and ``torch.compile`` wrap it as usual and ``save_pretrained`` is unaffected.
    """
    import torch.nn.functional as F
    from transformers.modeling_outputs import MaskedLMOutput

    base, output = model.base_model, model.get_output_embeddings()
    children = [child for child in model.children() if child is not base]
    if output is None or len(children) != 1 or not any(m is output for m in children[0].modules()):
        return False
    head = children[0]

    def forward(input_ids: Any = None, attention_mask: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        kwargs.pop("num_items_in_batch", None)
        kwargs["return_dict"] = True
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if labels is None:
            return MaskedLMOutput(logits=head(hidden))
        keep = labels != -100
        logits = head(hidden[keep])
        return MaskedLMOutput(loss=F.cross_entropy(logits.float(), labels[keep]), logits=logits)

    model.forward = forward
    return True
