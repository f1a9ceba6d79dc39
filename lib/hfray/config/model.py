"""``model:``: pretrained weights (a local dir, ``builtin:NAME`` or a Hub id) or a fresh model built from a config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hfray.config.section import Section


class ModelConfig(Section):
    """Either pretrained weights (``name_or_path``) or a fresh model built from ``architecture``."""

    name_or_path: str | None = Field(
        None, description="Local dir, 'builtin:all-MiniLM-L6-v2', or a Hugging Face Hub id."
    )
    architecture: dict[str, Any] | None = Field(
        None, description="A transformers config dict with 'model_type'; the model is randomly initialised."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer source; defaults to name_or_path. Needed with architecture (not for images)."
    )
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: (
        Literal["sdpa", "eager", "flex_attention", "varlen", "flash_attention_2", "flash_attention_3"] | None
    ) = Field(
        None,
        description="transformers' attention kernel; default: transformers' choice (sdpa where the model has it). "
        "varlen: PyTorch's own FlashAttention variable-length kernel (no package; training and scoring, not "
        "generation). flex_attention / varlen / flash_attention_*: GPU only. Packed SFT under varlen or "
        "flash_attention_* keeps TRL's one flattened row per batch (their varlen kernel's layout); otherwise it "
        "trains on rows (trl.packed_layout).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.architecture is None):
            raise ValueError("set exactly one of model.name_or_path (pretrained) or model.architecture")
        if self.architecture is not None and "model_type" not in self.architecture:
            raise ValueError("model.architecture needs a 'model_type' key (e.g. bert, gpt2, llama)")
        return self

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.name_or_path  # type: ignore[return-value]
