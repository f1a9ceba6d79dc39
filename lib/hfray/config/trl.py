"""The ``trl:`` job section: data columns and trainer settings of the TRL tasks ``sft``, ``dpo`` and ``grpo``.

Schema only (import-light); training is :mod:`hfray.train.recipes.trl`. Columns are renamed on the workers to
the names TRL's trainers expect (``messages``; ``prompt``/``completion``; ``text``; ``prompt``/``chosen``/
``rejected``), so any dataset layout works without editing the data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hfray.config.rewards import RewardSpec
from hfray.config.section import Section

TRL_TASKS = ("sft", "dpo", "grpo")
# Keys only grpo uses. Left out of a job's fingerprint while at their defaults, so that adding them did not
# change the run names (the fingerprint hashes the validated job, defaults included) of sft and dpo jobs.
GRPO_METRICS = ("reward",)  # evaluation.metrics of grpo (reward_std, kl, completion lengths are reported too)
GRPO_KEYS = ("num_generations", "max_completion_length", "temperature", "rewards")


class TrlSection(Section):
    format: Literal["auto", "messages", "prompt-completion", "text"] = Field(
        "auto",
        description="sft data: messages (chat turns, rendered with the chat template), prompt-completion, or "
        "text (plain language modelling on data.text_column); auto: the first whose columns exist.",
    )
    messages_column: str = Field("messages", description="sft: list of {role, content} turns.")
    prompt_column: str = Field("prompt", description="sft prompt-completion, dpo and grpo: the prompt (text or turns).")
    completion_column: str = Field("completion", description="sft prompt-completion: the completion.")
    chosen_column: str = Field("chosen", description="dpo: the preferred answer.")
    rejected_column: str = Field("rejected", description="dpo: the dispreferred answer.")
    chat_template: str | None = Field(
        None, description="A Jinja template file or a tokenizer dir whose template to use; default: the tokenizer's."
    )
    packing: bool = Field(False, description="sft: pack examples into data.max_length blocks (TRL's BFD packing).")
    packed_layout: Literal["auto", "rows", "flat"] = Field(
        "auto",
        description="sft with packing: 'flat' is TRL's one flattened row per batch (for FlashAttention's varlen "
        "kernel); 'rows' keeps the packed rows, documents told apart by position ids (same loss; under sdpa/eager the "
        "flattened row's mask grows with the square of the batch); 'auto': flat with varlen (the default on GPUs "
        "that run it) or flash_attention_*, else rows; 'rows' also keeps sdpa on GPUs.",
    )
    deferred_metrics: bool = Field(
        True,
        description="sft: TRL's step metrics (entropy, token accuracy, num_tokens) read from the device once per "
        "log instead of every step, and, with packing, the fused LM head scoring every position: no host sync "
        "inside a training step (hfray.train.recipes.trl.deferred); dpo with the sigmoid loss: its rewards, "
        "log-probs, logits, entropy, accuracy and num_tokens likewise, 17 host syncs a step fewer "
        "(hfray.train.recipes.trl.deferred_preference). The same numbers. false: TRL's own compute_loss.",
    )
    completion_only_loss: bool | None = Field(
        None, description="sft: loss on completions only (default: yes for prompt-completion data)."
    )
    assistant_only_loss: bool = Field(False, description="sft messages: loss on assistant turns only.")
    beta: float = Field(
        0.1, ge=0, description="dpo: strength of the KL penalty to the reference model; grpo: the KL coefficient."
    )
    loss_type: str = Field("sigmoid", description="dpo: TRL's loss_type (sigmoid, ipo, hinge, ...).")
    generation_max_new_tokens: int = Field(64, ge=1, le=4096, description="Default for hfray predict/serve.")
    num_generations: int = Field(4, ge=2, description="grpo: completions sampled per prompt (one group).")
    max_completion_length: int = Field(64, ge=1, le=8192, description="grpo: tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of the completions.")
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="grpo: the rewards, summed with their weights (hfray.config.rewards)."
    )


def hashed_trl(section: dict[str, Any]) -> dict[str, Any]:
    """The ``trl`` section as the job's fingerprint hashes it: grpo's keys dropped while at their defaults."""
    defaults = TrlSection().to_dict()
    return {k: v for k, v in section.items() if not (k in GRPO_KEYS and v == defaults[k])}
