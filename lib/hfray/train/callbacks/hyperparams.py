"""The job's learning rate and weight decay over a resumed checkpoint's (an HF Trainer callback, on the workers)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class JobHyperparamsCallback(TrainerCallback):
    """A Trainer callback that makes the job's learning rate and weight decay win over a checkpoint's.

    ``Trainer.train(resume_from_checkpoint=...)`` loads the optimizer and scheduler state *after*
    building them from the arguments, so a resumed run silently keeps the learning rate (and weight
    decay) of the run that saved the checkpoint. That undoes a PBT exploit, which resumes the donor's
    checkpoint with mutated hyperparameters. HF's schedules are a base rate times a factor of the
    step, so rescaling base and current rates by new/old keeps the schedule's shape.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw: Any) -> None:
        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps both
        opt = getattr(optimizer, "optimizer", optimizer)
        if opt is None or sched is None or not getattr(sched, "base_lrs", None):
            return
        ratios = [args.learning_rate / base for base in sched.base_lrs]
        if any(abs(r - 1.0) > 1e-9 for r in ratios):
            for group, ratio in zip(opt.param_groups, ratios, strict=False):
                group["lr"] *= ratio
                group["initial_lr"] = args.learning_rate
            sched.base_lrs = [args.learning_rate] * len(sched.base_lrs)
            sched._last_lr = [group["lr"] for group in opt.param_groups]
            if state.is_world_process_zero:
                print(f"[hfray] learning rate of the resumed checkpoint rescaled to {args.learning_rate:g}")
        # HF's default AdamW groups: [decay, no-decay]; only the first carries weight decay.
        if len(opt.param_groups) == 2 and opt.param_groups[1].get("weight_decay") == 0.0:
            opt.param_groups[0]["weight_decay"] = args.weight_decay
