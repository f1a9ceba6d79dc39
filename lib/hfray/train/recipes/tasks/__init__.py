"""Fine-tuning tasks beyond text classification (``token-classification``, ``question-answering``, ``seq2seq``,
``image-classification``).

Each task is a :class:`~hfray.train.recipes.tasks.base.TaskSpec` (:mod:`.token_classification`,
:mod:`.question_answering`, :mod:`.seq2seq`, :mod:`.image_classification`; looked up in :mod:`.registry`): its
columns and row checks, labels, model, features, collator, metrics and pipeline. This recipe trains any of them
in the shared lifecycle: the driver checks every row before Ray starts (:mod:`.driver`), each worker runs the
task's Trainer (:mod:`.worker`).
"""

from hfray.train.recipes.base import Recipe, WorkerFunction
from hfray.train.recipes.tasks import driver

WORKER = "hfray.train.recipes.tasks.worker"  # imported where its functions run (WorkerFunction)

RECIPE = Recipe(
    tasks=("token-classification", "question-answering", "seq2seq", "image-classification"),
    preflight=driver.preflight,
    describe=driver.describe,
    loop_config=driver.loop_config,
    train_loop_per_worker=WorkerFunction(WORKER, "train_loop_per_worker"),
    artifact_fields=WorkerFunction(WORKER, "artifact_fields"),
    sweepable=True,
    trial_data=driver.prepare_data,
)
