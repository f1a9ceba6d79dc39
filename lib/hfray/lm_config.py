"""Job-file sections for pre-training: ``tokenizer`` (train a tokenizer) and ``lm`` (language-model data).

They live apart from :mod:`hfray.config` so that module stays about fine-tuning; ``JobConfig`` embeds
them and calls :func:`lm_task_problems` for the rules that tie a task to its sections. The base
class repeats ``hfray.config.Section``'s two settings instead of importing it: importing
``hfray.config`` from here would be circular.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TokenizerTrainingConfig(_Section):
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


class LMConfig(_Section):
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
    record_shards: bool = Field(
        False, description="Each worker writes hashes of the blocks it trained on to <run>/shards/ (audit)."
    )


def lm_task_problems(raw: Any) -> list[tuple[str, str]]:
    """(key, message) for each rule a job breaks that ties its task to the LM sections.

    ``raw`` is the validated ``JobConfig``; kept loosely typed to avoid a circular import.
    """
    problems: list[tuple[str, str]] = []
    task, t, ev = raw.task, raw.training, raw.evaluation
    if task not in LM_TASKS:
        if raw.lm is not None:
            problems.append(("lm", f"only for tasks {list(LM_TASKS)}; this job's task is {task!r}"))
        return problems + _tokenizer_problems(raw)
    if ev.metrics:
        problems.append(("evaluation.metrics", f"{task} jobs report loss and perplexity only; set [] or leave unset"))
    if ev.metric_for_best_model != "loss":
        problems.append(("evaluation.metric_for_best_model", f"must be 'loss' for {task} (perplexity follows it)"))
    if t.class_weights != "none":
        problems.append(("training.class_weights", f"only for text-classification, not {task}"))
    if raw.data.text_pair_column:
        problems.append(("data.text_pair_column", f"not used by {task}; remove it"))
    if raw.lm.pipeline == "ray-data":
        # A Ray Data stream has no length: HF cannot count epochs, so the run is measured in steps.
        if t.max_steps <= 0:
            problems.append(("training.max_steps", "lm.pipeline 'ray-data' streams data: set a positive step count"))
        if t.eval_strategy != "steps":
            problems.append(("training.eval_strategy", "lm.pipeline 'ray-data' has no epochs: use 'steps'"))
    return problems + _tokenizer_problems(raw)


def _tokenizer_problems(raw: Any) -> list[tuple[str, str]]:
    if raw.tokenizer is None:
        return []
    problems = []
    target = raw.model.tokenizer
    if target is None or target.startswith("builtin:") or not target.startswith(("/", "./", "../", "~")):
        problems.append(
            ("model.tokenizer", "the tokenizer section saves its tokenizer here: give a local path (/, ./, ../ or ~)")
        )
    roles = raw.tokenizer.roles(raw.task)
    needed = REQUIRED_ROLES.get(raw.task, ())
    missing = [r for r in needed if r not in roles]
    if missing:
        problems.append(("tokenizer.special_tokens", f"{raw.task} needs tokens for roles {missing}"))
    return problems
