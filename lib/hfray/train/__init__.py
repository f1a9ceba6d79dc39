"""Training runs on Ray Train: the run lifecycle, and the task recipes built on it.

Layers inside this package, lowest first:

- the lifecycle's parts: :mod:`.arguments` (TrainingArguments of a job), :mod:`.scaleout` (DeepSpeed/FSDP presets),
  :mod:`.torch_backend`, :mod:`.callbacks` (HF Trainer callbacks on the workers), :mod:`.controller` (Ray Train
  callbacks in the Train controller), :mod:`.tracking`;
- the lifecycle: :mod:`.worker` (steps every worker function shares), :mod:`.launch` (the Ray Train trainer of a
  run), :mod:`.driver` (a run from checks to summary);
- :mod:`.recipes`: one package per task family (classification, tasks, language_model, trl), each with a
  ``driver`` and a ``worker`` module, and the task -> recipe table;
- :mod:`.run`: ``run_training(job)``, the entry point: the table's recipe through the lifecycle.

Import-light: Ray unpickles the Train controller's callbacks from :mod:`.controller` in a fresh process.
"""
