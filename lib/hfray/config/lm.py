"""Job-file sections for pre-training: ``tokenizer`` (train a tokenizer) and ``lm`` (language-model data).

``JobConfig`` (:mod:`hfray.config.job`) embeds them and holds the rules that tie a task to its sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hfray.config.section import Section

LM_TASKS = ("masked-lm", "causal-lm")

# Roles a tokenizer's special tokens can play (the keyword names of transformers' tokenizers).
SPECIAL_ROLES = ("unk", "pad", "cls", "sep", "mask", "bos", "eos")
# What each task needs from its tokenizer: the MLM collator masks with mask_token and never masks
# cls/sep/pad; packing for causal LM separates documents with eos.
REQUIRED_ROLES = {"masked-lm": ("unk", "pad", "cls", "sep", "mask"), "causal-lm": ("eos",)}
DEFAULT_SPECIAL_TOKENS = {
    "masked-lm": {"unk": "[UNK]", "pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "causal-lm": {"unk": "<unk>", "pad": "<pad>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"},
}


class TokenizerTrainingConfig(Section):
    """How ``hfray tokenizer`` trains the tokenizer that ``model.tokenizer`` names (it is saved there)."""

    algorithm: Literal["wordpiece", "bpe", "unigram"] = Field(
        "wordpiece", description="wordpiece (BERT), bpe (byte-level, GPT-2) or unigram (SentencePiece-style)."
    )
    vocab_size: int = Field(8000, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1, description="Merges/pieces seen fewer times are dropped (wordpiece, bpe).")
    lowercase: bool = False
    special_tokens: dict[str, str] | None = Field(
        None, description=f"Role -> token, roles {list(SPECIAL_ROLES)}; default depends on the task."
    )
    source: str | None = Field(None, description="Text to train on (same forms as data.train); default data.train.")
    max_texts: int | None = Field(None, ge=1, description="Use at most this many texts (the first ones).")

    @model_validator(mode="after")
    def _roles_known(self) -> TokenizerTrainingConfig:
        unknown = sorted(set(self.special_tokens or {}) - set(SPECIAL_ROLES))
        if unknown:
            raise ValueError(
                f"tokenizer.special_tokens: unknown roles {unknown}; expected any of {list(SPECIAL_ROLES)}"
            )
        return self

    def roles(self, task: str) -> dict[str, str]:
        """Special tokens by role: the job's, else the task's defaults."""
        if self.special_tokens is not None:
            return dict(self.special_tokens)
        return dict(DEFAULT_SPECIAL_TOKENS.get(task, DEFAULT_SPECIAL_TOKENS["masked-lm"]))


class LMConfig(Section):
    """Language-model data: how text becomes fixed-length training blocks, and where that work runs."""

    pipeline: Literal["ray-data", "datasets"] = Field(
        "ray-data",
        description="ray-data: read, tokenize and pack on Ray Data CPU tasks, streamed to workers; "
        "datasets: every worker loads the corpus in memory (small corpora).",
    )
    block_size: int = Field(128, ge=8, le=32768, description="Tokens per training block (texts are packed).")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: share of tokens masked.")
    masking: Literal["bernoulli", "exact"] = Field(
        "bernoulli",
        description="masked-lm: bernoulli = each token with probability mlm_probability (HF's "
        "DataCollatorForLanguageModeling); exact = round(mlm_probability x block_size) tokens of every block (BERT's "
        "original recipe): a fixed masked-token count, so torch.compile sees static shapes (use with "
        "training.torch_compile).",
    )
    mlm_loss_on_masked_only: bool = Field(
        True,
        description="masked-lm: run the output head on masked positions only (same loss, ~1/7 of the head's "
        "FLOPs and no batch x block x vocab logits tensor); BERT/RoBERTa-style heads, others run in full.",
    )
    tokenize_batch_size: int = Field(256, ge=1, description="Texts per Ray Data tokenize-and-pack batch.")
    tokenize_num_cpus: float = Field(1.0, gt=0, description="CPUs each Ray Data tokenize task reserves.")
    local_shuffle_buffer_size: int = Field(
        256, ge=0, description="Blocks each worker shuffles locally while streaming (0: no shuffle)."
    )
    materialize: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Keep the tokenized training blocks in Ray's object store after one pass, so later epochs do "
        "not read and tokenize the corpus again (Ray Data's own advice for multi-epoch training). auto: when the "
        "corpus is local or in memory and its size is under a quarter of the cluster's object store.",
    )
    prefetch_batches: int = Field(
        1, ge=0, le=64, description="Collated batches each worker keeps ready ahead of the training step."
    )
    record_shards: bool = Field(
        False, description="Each worker writes hashes of the blocks it trained on to <run>/shards/ (audit)."
    )
