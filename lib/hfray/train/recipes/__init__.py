"""The task -> recipe table: every task a job can name, and the recipe that trains it.

Recipes are peers; each is a package with a ``driver`` module (checks before Ray starts) and a ``worker`` module
(the function every Ray Train worker runs). The table holds module names only, so looking a task up imports
nothing heavy until a recipe is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hfray.errors import ConfigError, Problem

if TYPE_CHECKING:
    from hfray.train.recipes.base import Recipe

RECIPES: dict[str, str] = {
    "text-classification": "hfray.train.recipes.classification",
    "token-classification": "hfray.train.recipes.tasks",
    "question-answering": "hfray.train.recipes.tasks",
    "seq2seq": "hfray.train.recipes.tasks",
    "image-classification": "hfray.train.recipes.tasks",
    "masked-lm": "hfray.train.recipes.language_model",
    "causal-lm": "hfray.train.recipes.language_model",
    "sft": "hfray.train.recipes.trl",
    "dpo": "hfray.train.recipes.trl",
    "grpo": "hfray.train.recipes.grpo",
}


def recipe_for(task: str) -> Recipe:
    """The recipe of a task (its package's ``RECIPE``)."""
    if task not in RECIPES:
        raise ConfigError([Problem("task", f"no recipe trains {task!r}; expected one of {sorted(RECIPES)}")])
    return importlib.import_module(RECIPES[task]).RECIPE
