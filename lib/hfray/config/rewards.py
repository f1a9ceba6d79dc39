"""``trl.rewards``: the rewards of a ``grpo`` job, summed with weights (schema only; scoring is the grpo recipe's).

Each entry names a ``kind`` and the keys that kind uses:

- ``exact_match`` / ``numeric_match``: the completion's answer against a reference ``column`` (``pattern``: a
  regex whose first group is the answer; default: the whole stripped completion / its last number);
- ``regex``: 1 when ``pattern`` occurs in the completion (a format reward, e.g. an answer inside a tag);
- ``length``: a penalty, ``-max(0, tokens - target) / target``;
- ``model``: the probability an hfray text-classification ``artifact`` gives ``label`` for the completion;
- ``function``: ``module:function`` called as ``function(prompts, completions, **columns)``, a float per completion.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from hfray.config.section import Section

REWARD_KINDS = ("exact_match", "numeric_match", "regex", "length", "model", "function")
# The keys each kind needs, and those it may take besides weight and name.
REQUIRED: dict[str, tuple[str, ...]] = {
    "exact_match": ("column",),
    "numeric_match": ("column",),
    "regex": ("pattern",),
    "length": ("target",),
    "model": ("artifact", "label"),
    "function": ("function",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {"exact_match": ("pattern",), "numeric_match": ("pattern",)}
KIND_KEYS = ("column", "pattern", "target", "artifact", "label", "function")


class RewardSpec(Section):
    kind: Literal["exact_match", "numeric_match", "regex", "length", "model", "function"]
    weight: float = Field(1.0, description="This reward's weight in the sum.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Metric name (rewards/<name>/mean); default: the kind."
    )
    column: str | None = Field(None, description="exact_match, numeric_match: the reference answer's column.")
    pattern: str | None = Field(None, description="regex: must occur; *_match: its first group is the answer.")
    target: int | None = Field(None, ge=1, description="length: completion tokens allowed before the penalty.")
    artifact: str | None = Field(None, description="model: an hfray text-classification artifact (dir or URI).")
    label: str | None = Field(None, description="model: the label whose probability is the reward.")
    function: str | None = Field(None, description="function: 'package.module:function'.")

    @model_validator(mode="after")
    def _kind_keys(self) -> RewardSpec:
        needed, allowed = REQUIRED[self.kind], REQUIRED[self.kind] + OPTIONAL.get(self.kind, ())
        missing = [k for k in needed if getattr(self, k) is None]
        extra = [k for k in KIND_KEYS if k not in allowed and getattr(self, k) is not None]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {missing}")
        if extra:
            raise ValueError(f"kind {self.kind!r} does not use {extra}; it takes {list(allowed)}")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
            if self.kind != "regex" and compiled.groups < 1:
                raise ValueError(f"pattern of {self.kind!r} needs a group (the answer), e.g. '<answer>(.*?)</answer>'")
        if self.function is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.function):
            raise ValueError(f"function {self.function!r}: expected 'package.module:function'")
        return self


def reward_names(specs: list[RewardSpec]) -> list[str]:
    """Each reward's metric name: its ``name``, else its kind (numbered when a kind repeats)."""
    kinds = [s.kind for s in specs]
    names = [s.name or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}_{i}") for i, s in enumerate(specs)]
    return names
