"""The ``peft:`` job section: parameter-efficient fine-tuning (LoRA, QLoRA, IA3, prefix and prompt tuning).

Only the schema lives here (pydantic, import-light); building the adapter is :mod:`hfray.model.peft`.
``JobConfig`` (:mod:`hfray.config.job`) embeds :class:`PeftSection` and holds the rules that tie the
section to the rest of the job (QLoRA needs GPUs and pretrained weights; pre-training trains everything).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hfray.config.section import Section

PEFT_METHODS = ("lora", "qlora", "ia3", "prefix", "prompt")
# Fields that only mean something for some methods: setting them for another one is a mistake worth naming.
_METHOD_FIELDS = {
    "r": ("lora", "qlora"),
    "alpha": ("lora", "qlora"),
    "dropout": ("lora", "qlora"),
    "bias": ("lora", "qlora"),
    "quantization_bits": ("qlora",),
    "feedforward_modules": ("ia3",),
    "target_modules": ("lora", "qlora", "ia3"),
    "num_virtual_tokens": ("prefix", "prompt"),
    "prompt_init_text": ("prompt",),
}
# Tasks that train every weight from scratch: an adapter over random frozen weights learns nothing useful.
PRETRAINING_TASKS = ("masked-lm", "causal-lm")


class PeftSection(Section):
    """Which PEFT method, and its knobs; unset target modules take PEFT's per-architecture defaults."""

    method: Literal["lora", "qlora", "ia3", "prefix", "prompt"] = Field(
        "lora", description="lora, qlora (LoRA over a 4/8-bit base; CUDA + bitsandbytes), ia3, prefix, prompt."
    )
    r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names (suffixes) to adapt, or 'all-linear'; default: PEFT's mapping for the "
        "model type (e.g. bert: query, value; llama: q_proj, v_proj).",
    )
    feedforward_modules: list[str] | None = Field(None, description="IA3: which target modules are feed-forward.")
    modules_to_save: list[str] | None = Field(
        None, description="Extra modules trained fully and saved with the adapter; default: the task's head."
    )
    num_virtual_tokens: int = Field(16, ge=1, le=4096, description="prefix/prompt tuning: virtual tokens.")
    prompt_init_text: str | None = Field(None, description="prompt tuning: initialise from this text's embeddings.")
    quantization_bits: Literal[4, 8] = Field(4, description="qlora: 4-bit NF4 or 8-bit (LLM.int8) base weights.")
    merge: bool = Field(False, description="Also export the adapter merged into the base as <artifact>/merged.")

    @model_validator(mode="after")
    def _fields_fit_method(self) -> PeftSection:
        misplaced = [
            f"peft.{name} (only for {'/'.join(methods)})"
            for name, methods in _METHOD_FIELDS.items()
            # Differs from its default (not "was given"): a job round-tripped through to_dict() sets every key.
            if getattr(self, name) != type(self).model_fields[name].default and self.method not in methods
        ]
        if misplaced:
            raise ValueError(f"not used by peft.method {self.method!r}: {', '.join(misplaced)}")
        if self.merge and self.method in ("prefix", "prompt"):
            raise ValueError(f"peft.merge: {self.method} tuning adds virtual tokens; there are no weights to merge")
        return self
