"""The step budget on a resumed run: a checkpoint at ``max_steps`` trains no further step.

Hugging Face's ``Trainer.train(resume_from_checkpoint=...)`` resumed from a checkpoint whose ``global_step`` is
already ``max_steps`` still runs one optimizer step when ``max_steps`` is not a multiple of the steps per epoch
(or the data is a stream): the epoch loop only checks ``should_training_stop`` after a step. Seen in a sweep whose
driver was killed after a trial's last checkpoint: ``--resume`` trained that trial to step 41 of 40.

:class:`StepBudgetCallback` ends ``train`` before its first step when the budget is spent; the worker then
finishes the Trainer as ``train`` would have (:func:`finish_without_steps`): the best model loaded when the job
asks for it, ``on_train_end`` on every callback. Workers only (imports transformers).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class StepBudgetReached(Exception):
    """Raised inside ``Trainer.train`` on a resumed run that has no step left to train."""


class StepBudgetCallback(TrainerCallback):
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            if state.is_world_process_zero:
                print(
                    f"[hfray] checkpoint at step {state.global_step} is the last of max_steps {state.max_steps}: "
                    "nothing left to train, finishing the run",
                    flush=True,
                )
            raise StepBudgetReached


def finish_without_steps(trainer: Any) -> None:
    """What ``Trainer.train`` does after its last step, for a run that had none left: the best checkpoint's weights
    (``load_best_model_at_end``) and ``on_train_end`` (the Ray report flush, throughput's end-of-training gather)."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None:
        trainer._load_best_model()  # transformers' own loader: DeepSpeed, FSDP and PEFT aware (no public one)
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, state, trainer.control)
    trainer.is_in_train = False
