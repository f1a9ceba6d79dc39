"""GRPO (``task: grpo`` with TRL's ``GRPOTrainer``) of causal LMs, rewarded by what the job file declares.

The lifecycle applies unchanged: checks before Ray starts (prompts, every reward: its columns, its function, its
reward-model artifact; the chat template; the model config), DDP, a report at every evaluation (mean reward and
its spread, KL, completion lengths), rank-aware checkpoints, resume, and an artifact (full model or PEFT
adapter) that ``hfray predict`` / ``hfray serve`` load as ``text-generation``.
"""

from hfray.train.recipes.base import Recipe, WorkerFunction
from hfray.train.recipes.grpo import driver

WORKER = "hfray.train.recipes.grpo.worker"  # imported where its functions run (WorkerFunction)

RECIPE = Recipe(
    tasks=("grpo",),
    preflight=driver.preflight,
    describe=driver.describe,
    loop_config=driver.loop_config,
    train_loop_per_worker=WorkerFunction(WORKER, "train_loop_per_worker"),
    artifact_fields=WorkerFunction(WORKER, "artifact_fields"),
)
