"""The rewards of a grpo job (``trl.rewards``, :mod:`hfray.config.rewards`): checked on the driver, scored on
the workers.

Every reward is a callable TRL's ``GRPOTrainer`` calls as ``reward(prompts=..., completions=..., completion_ids=...,
**columns)``; its ``__name__`` names its metric (``rewards/<name>/mean``). Chat completions (lists of turns) are
scored on their text. A ``function`` reward gets the same arguments, completions as text.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from hfray.config import JobConfig
from hfray.config.rewards import RewardSpec, reward_names
from hfray.errors import ConfigError, HfrayError, Problem

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
SIGNATURE = "(prompts, completions, **kwargs) -> list[float]"


def completion_text(completion: Any) -> str:
    """A completion as text: chat completions are lists of turns, their contents joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(turn.get("content", "")) for turn in completion)


def extract_answer(text: str, pattern: str | None, numeric: bool) -> str | None:
    """The answer in a completion: ``pattern``'s first group (last match), else the last number / the whole text."""
    if pattern is not None:
        found = re.findall(pattern, text, flags=re.DOTALL)
        if not found:
            return None
        last = found[-1]
        text = last[0] if isinstance(last, tuple) else last
    if numeric:
        numbers = _NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    return text.strip()


def _same_number(answer: str | None, reference: Any) -> float:
    try:
        return float(answer is not None and math.isclose(float(answer), float(reference), abs_tol=1e-6))
    except ValueError:
        return 0.0


class Reward:
    """One reward of the job; subclasses score a batch of completions."""

    def __init__(self, spec: RewardSpec, name: str) -> None:
        self.spec = spec
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return self.score(prompts, [completion_text(c) for c in completions], kwargs)

    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        raise NotImplementedError


class MatchReward(Reward):
    """1 when the completion's answer equals the reference column's (as text, or as numbers)."""

    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        numeric = self.spec.kind == "numeric_match"
        answers = [extract_answer(t, self.spec.pattern, numeric) for t in texts]
        references = kwargs[self.spec.column]
        if numeric:
            return [_same_number(a, r) for a, r in zip(answers, references, strict=True)]
        return [float(a is not None and a == str(r).strip()) for a, r in zip(answers, references, strict=True)]


class RegexReward(Reward):
    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        pattern = re.compile(self.spec.pattern or "", flags=re.DOTALL)
        return [float(pattern.search(t) is not None) for t in texts]


class LengthReward(Reward):
    """``-max(0, tokens - target) / target``: 0 up to ``target`` completion tokens, falling past it."""

    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        target = self.spec.target or 1
        counts = [len(ids) for ids in kwargs["completion_ids"]]
        return [-max(0, n - target) / target for n in counts]


class ModelReward(Reward):
    """The probability an hfray text-classification artifact gives ``label`` for each completion's text."""

    def __init__(self, spec: RewardSpec, name: str, device: int | str | None = None) -> None:
        super().__init__(spec, name)
        self.device = device
        self.pipe: Any = None

    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        if self.pipe is None:
            from hfray.artifacts.loading import load_artifact_pipeline

            self.pipe = load_artifact_pipeline(self.spec.artifact or "", device=self.device)
        scored = self.pipe(texts, top_k=None, truncation=True)
        return [next((s["score"] for s in row if s["label"] == self.spec.label), 0.0) for row in scored]


class FunctionReward(Reward):
    def __init__(self, spec: RewardSpec, name: str) -> None:
        super().__init__(spec, name)
        self.function = import_function(spec.function or "")

    def score(self, prompts: list[Any], texts: list[str], kwargs: dict[str, Any]) -> list[float]:
        return [float(x) for x in self.function(prompts=prompts, completions=texts, **kwargs)]


def import_function(path: str) -> Callable[..., Any]:
    """The callable at ``module:function``; a HfrayError saying what is missing otherwise."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HfrayError(f"module {module_name!r} cannot be imported ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise HfrayError(f"module {module_name!r} has no function {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise HfrayError(f"{path} is a {type(target).__name__}, not a function")
    return target


def signature_problem(function: Callable[..., Any]) -> str | None:
    """Why ``function`` cannot be called as a reward, or None."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None  # builtins without a signature: trust them
    kinds = {p.name: p.kind for p in params}
    if inspect.Parameter.VAR_KEYWORD not in kinds.values():
        return f"takes {list(kinds)} but no **kwargs; a reward function is {SIGNATURE}"
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [p.name for p in params if p.default is p.empty and p.kind in named]
    extra = [name for name in required if name not in ("prompts", "completions")]
    if extra:
        return f"requires {extra}, which hfray does not pass; a reward function is {SIGNATURE}"
    return None


def spec_problems(spec: RewardSpec, columns: list[str]) -> list[tuple[str, str]]:
    """(key suffix, message) for one reward against the data's columns, its function, its artifact."""
    if spec.column is not None and spec.column not in columns:
        return [("column", f"column {spec.column!r} not in the data (have {columns})")]
    if spec.kind == "function":
        try:
            problem = signature_problem(import_function(spec.function or ""))
        except HfrayError as exc:
            problem = str(exc)
        return [("function", problem)] if problem else []
    if spec.kind == "model":
        return model_problems(spec)
    return []


def model_problems(spec: RewardSpec) -> list[tuple[str, str]]:
    from hfray.artifacts.manifest import read_manifest

    try:
        manifest = read_manifest(spec.artifact or "")
    except HfrayError as exc:
        return [("artifact", str(exc))]
    if manifest["task"] != "text-classification":
        return [("artifact", f"a {manifest['task']!r} artifact; a reward model is a text-classification artifact")]
    if spec.label not in manifest["labels"]:
        return [("label", f"{spec.label!r} is not a label of {spec.artifact} (labels {manifest['labels']})")]
    return []


def check_rewards(job: JobConfig, columns: list[str]) -> None:
    """Every reward of the job usable with data of ``columns``, or one ConfigError naming each bad key."""
    assert job.trl is not None
    problems = [
        Problem(f"trl.rewards.{i}.{key}", message)
        for i, spec in enumerate(job.trl.rewards)
        for key, message in spec_problems(spec, columns)
    ]
    if problems:
        raise ConfigError(problems, "job")


def build_rewards(job: JobConfig, device: int | str | None = None) -> tuple[list[Reward], list[float]]:
    """The job's reward callables for ``GRPOTrainer(reward_funcs=...)`` and their weights."""
    assert job.trl is not None
    specs = job.trl.rewards
    kinds: dict[str, type[Reward]] = {"exact_match": MatchReward, "numeric_match": MatchReward}
    kinds |= {"regex": RegexReward, "length": LengthReward, "function": FunctionReward}
    funcs = [
        ModelReward(s, name, device) if s.kind == "model" else kinds[s.kind](s, name)
        for s, name in zip(specs, reward_names(specs), strict=True)
    ]
    return funcs, [s.weight for s in specs]


def reward_columns(job: JobConfig) -> list[str]:
    """The data columns the rewards read (reference answers)."""
    assert job.trl is not None
    return sorted({s.column for s in job.trl.rewards if s.column is not None})
