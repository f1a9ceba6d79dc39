"""The ``trl:`` job section: data columns and trainer settings of the TRL tasks ``sft`` and ``dpo``.

Schema only (import-light); training is :mod:`hfray.train.recipes.trl`. Columns are renamed on the workers to
the names TRL's trainers expect (``messages``; ``prompt``/``completion``; ``text``; ``prompt``/``chosen``/
``rejected``), so any dataset layout works without editing the data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hfray.config.section import Section

TRL_TASKS = ("sft", "dpo")


class TrlSection(Section):
    format: Literal["auto", "messages", "prompt-completion", "text"] = Field(
        "auto",
        description="sft data: messages (chat turns, rendered with the chat template), prompt-completion, or "
        "text (plain language modelling on data.text_column); auto: the first whose columns exist.",
    )
    messages_column: str = Field("messages", description="sft: list of {role, content} turns.")
    prompt_column: str = Field("prompt", description="sft prompt-completion and dpo: the prompt (text or turns).")
    completion_column: str = Field("completion", description="sft prompt-completion: the completion.")
    chosen_column: str = Field("chosen", description="dpo: the preferred answer.")
    rejected_column: str = Field("rejected", description="dpo: the dispreferred answer.")
    chat_template: str | None = Field(
        None, description="A Jinja template file or a tokenizer dir whose template to use; default: the tokenizer's."
    )
    packing: bool = Field(False, description="sft: pack examples into data.max_length blocks (TRL's BFD packing).")
    completion_only_loss: bool | None = Field(
        None, description="sft: loss on completions only (default: yes for prompt-completion data)."
    )
    assistant_only_loss: bool = Field(False, description="sft messages: loss on assistant turns only.")
    beta: float = Field(0.1, gt=0, description="dpo: strength of the KL penalty to the reference model.")
    loss_type: str = Field("sigmoid", description="dpo: TRL's loss_type (sigmoid, ipo, hinge, ...).")
    generation_max_new_tokens: int = Field(64, ge=1, le=4096, description="Default for hfray predict/serve.")
