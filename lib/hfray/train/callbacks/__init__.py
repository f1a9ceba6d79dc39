"""Hugging Face ``TrainerCallback`` s that run inside the Trainer on every Ray Train worker.

- :mod:`~hfray.train.callbacks.report`: every evaluation to Ray, rank-aware checkpoints;
- :mod:`~hfray.train.callbacks.throughput`: steady-state samples/s, tokens/s, MFU, peak memory;
- :mod:`~hfray.train.callbacks.hyperparams`: the job's learning rate over a resumed checkpoint's (PBT);
- :mod:`~hfray.train.callbacks.budget`: a run resumed at ``max_steps`` trains no further step.

Each module imports transformers' Trainer stack (torch, peft): workers only.
"""
