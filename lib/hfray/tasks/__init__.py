"""Fine-tuning tasks beyond text classification: one module per task, one shared runner.

``token-classification`` (:mod:`.token_classification`), ``question-answering``
(:mod:`.question_answering`) and ``seq2seq`` (:mod:`.seq2seq`) are :class:`~hfray.tasks.base.TaskSpec`
objects; :mod:`hfray.tasks.runner` trains any of them on Ray Train through the same spine as text
classification (``hfray.train``: checks before Ray, reporting at every evaluation, rank-aware
checkpoints, resume, slim artifact). A new task is a new module plus one line in :func:`get_task`.
"""

from __future__ import annotations

from typing import Any

from hfray.task_config import FINETUNE_TASKS

__all__ = ["FINETUNE_TASKS", "get_task"]


def get_task(name: str) -> Any:
    """The TaskSpec of a task name (modules import transformers: loaded on demand)."""
    if name == "token-classification":
        from hfray.tasks.token_classification import TokenClassificationTask

        return TokenClassificationTask()
    if name == "question-answering":
        from hfray.tasks.question_answering import QuestionAnsweringTask

        return QuestionAnsweringTask()
    if name == "seq2seq":
        from hfray.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask()
    raise KeyError(f"not a hfray.tasks task: {name!r}; expected one of {list(FINETUNE_TASKS)}")
