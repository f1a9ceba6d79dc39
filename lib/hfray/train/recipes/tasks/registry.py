"""The fine-tuning tasks of this recipe by name: each a :class:`~hfray.train.recipes.tasks.base.TaskSpec`.

A new task is a new module plus one line here (and its job-file section in :mod:`hfray.config.tasks`). Task
modules import transformers: each is loaded when its task is asked for.
"""

from __future__ import annotations

from hfray.config import FINETUNE_TASKS
from hfray.train.recipes.tasks.base import TaskSpec


def get_task(name: str) -> TaskSpec:
    """The TaskSpec of a task name."""
    if name == "token-classification":
        from hfray.train.recipes.tasks.token_classification import TokenClassificationTask

        return TokenClassificationTask()
    if name == "question-answering":
        from hfray.train.recipes.tasks.question_answering import QuestionAnsweringTask

        return QuestionAnsweringTask()
    if name == "seq2seq":
        from hfray.train.recipes.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask()
    if name == "image-classification":
        from hfray.train.recipes.tasks.image_classification import ImageClassificationTask

        return ImageClassificationTask()
    raise KeyError(f"not a fine-tuning task of this recipe: {name!r}; expected one of {list(FINETUNE_TASKS)}")
