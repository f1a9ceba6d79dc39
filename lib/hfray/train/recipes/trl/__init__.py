"""TRL fine-tuning (``task: sft`` with ``SFTTrainer``, ``task: dpo`` with ``DPOTrainer``) of causal LMs.

TRL's trainers subclass the HF ``Trainer``, so the whole lifecycle applies unchanged: checks before Ray starts
(data columns, tokenizer and chat template, model config), DDP / ZeRO / FSDP (``training.strategy``), a report
at every evaluation, rank-aware checkpoints, resume, and an artifact (full model or PEFT adapter) that
``hfray predict`` / ``hfray serve`` load as ``text-generation``. Sweepable (metric eval_loss).
"""

from hfray.train.recipes.base import Recipe, WorkerFunction
from hfray.train.recipes.trl import driver

WORKER = "hfray.train.recipes.trl.worker"  # imported where its functions run (WorkerFunction)

RECIPE = Recipe(
    tasks=("sft", "dpo"),
    preflight=driver.preflight,
    describe=driver.describe,
    loop_config=driver.loop_config,
    train_loop_per_worker=WorkerFunction(WORKER, "train_loop_per_worker"),
    artifact_fields=WorkerFunction(WORKER, "artifact_fields"),
    sweepable=True,
)
