"""Language models for pre-training and TRL: configs checked against the tokenizer and block size, and models.

Masked LMs (BERT-style) and causal LMs (GPT-2/Llama-style), randomly initialised from ``model.architecture`` or
pretrained; plus an optional masked-LM forward that runs the output head on masked positions only.
"""

from __future__ import annotations

from typing import Any

from hfray.config import ModelConfig
from hfray.errors import ModelError
from hfray.model.loading import load_config, model_from_config_or_pretrained

# RoBERTa-family position ids start after the padding index, so blocks need that many extra positions.
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer")


def lm_overrides(tokenizer: Any, arch: dict[str, Any]) -> dict[str, Any]:
    """Config values a language model takes from its tokenizer (vocab size unless the job sets it): the pad, bos
    and eos ids; for a model built from ``model.architecture`` also the other special ids its config class has
    (ModernBERT's cls and sep), and ``None`` for a default id past this tokenizer's vocabulary (ModernBERT's defaults
    are its own 50k vocabulary's), so no config points at a token that does not exist."""
    found: dict[str, Any] = {}
    defaults = _config_defaults(arch.get("model_type"))
    for role in ("pad", "bos", "eos", "cls", "sep"):
        key = f"{role}_token_id"
        value = getattr(tokenizer, key, None)
        if key in arch or (role in ("cls", "sep") and key not in defaults):
            continue
        if value is not None:
            found[key] = value
        elif isinstance(defaults.get(key), int) and defaults[key] >= len(tokenizer):
            found[key] = None
    if "vocab_size" not in arch:
        found["vocab_size"] = len(tokenizer)
    return found


def _config_defaults(model_type: str | None) -> dict[str, Any]:
    """The default attributes of ``model_type``'s config class; empty for a pretrained model or an unknown type."""
    from transformers import CONFIG_MAPPING

    if model_type is None or model_type not in CONFIG_MAPPING:
        return {}
    return CONFIG_MAPPING[model_type]().to_dict()


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


def mlm_loss_on_masked_only(model: Any, full_mask: bool = False) -> bool:
    """Make a masked LM run its output head on masked positions only; False if its layout is not supported.

    The stock forward projects every position onto the vocabulary (batch x block x vocab logits) and then
    ignores the ~85% that carry no label. Here the encoder runs in full, the head (BERT's ``cls``,
    RoBERTa's ``lm_head``: the one child module that holds the output embeddings) sees only labelled
    positions, and the loss is the same mean cross-entropy. The forward is replaced on the instance, so
    DDP and ``torch.compile`` wrap it as usual and ``save_pretrained`` is unaffected. ModernBERT does the same
    itself when its ``sparse_prediction`` is on (a saved config keeps it; without labels, as in a fill-mask
    pipeline, it still scores every position).

    ``full_mask``: a batch without an ``attention_mask`` (packed blocks: every position is real) gets an all-ones one,
    for an encoder that will be compiled. Traced without a mask, BERT's sdpa attention gets a broadcast (stride-0)
    mask that no fused kernel takes, and runs as unfused matmuls and softmax; with one, cuDNN's fused attention. One
    H100, BERT-base, batch 256 x 128, compiled: 72.0 against 61.4 ms a step, loss alike
    (``bench/results/mlm_attention_h100_dec06.json``). Eager needs none (its unmasked path is already fused).
    """
    if hasattr(model, "sparse_prediction"):  # ModernBERT's own switch (its head is two modules: head, decoder)
        model.sparse_prediction = model.config.sparse_prediction = True
        model.sparse_pred_ignore_index = model.config.sparse_pred_ignore_index = -100
        return True
    import torch
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
        if full_mask and attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if labels is None:
            return MaskedLMOutput(logits=head(hidden))
        keep = labels != -100
        logits = head(hidden[keep])
        return MaskedLMOutput(loss=F.cross_entropy(logits.float(), labels[keep]), logits=logits)

    model.forward = forward
    return True
