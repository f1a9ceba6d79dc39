"""Text classification (``task: text-classification``): a sequence classifier fine-tuned with the HF ``Trainer``.

The driver checks data, labels, tokenizer and model config (:mod:`.driver`); each worker trains and the ranks
export the artifact, which loads with ``pipeline("text-classification")`` (:mod:`.worker`). On a running cluster
the workers start while the driver checks (the start gate). Sweepable.
"""

from hfray.train.recipes.base import Recipe, WorkerFunction
from hfray.train.recipes.classification import driver

WORKER = "hfray.train.recipes.classification.worker"  # imported where its functions run (WorkerFunction)

RECIPE = Recipe(
    tasks=("text-classification",),
    preflight=driver.preflight,
    describe=driver.describe,
    loop_config=driver.loop_config,
    train_loop_per_worker=WorkerFunction(WORKER, "train_loop_per_worker"),
    artifact_fields=WorkerFunction(WORKER, "artifact_fields"),
    overlaps_checks=True,
    sweepable=True,
    trial_data=driver.prepare_data,
)
