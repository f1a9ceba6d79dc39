"""Text classification's speed defaults, resolved on each worker once the tokenized data exists (the worker knows
whether it trains on a GPU, and how many optimizer steps the run plans): CUDA graphs for long runs on one GPU, and
batches without padding sent without their all-ones mask (:func:`padding_collator`).

A classifier's eager step is host-bound on a GPU: one H100, BERT-base, 64 x 128 tokens, the plain Trainer and hfray
alike ran 44-49 ms a step, a bare loop of the same model 42 ms (Python launching each kernel, the backward's ~20 ms
most of it; ``bench/cls_step_probe.py --cprofile``). Compiled without graphs it is host-bound too (Inductor's Python
wrappers launch ~460 Triton kernels a step). So: the whole model compiled as one graph (``compile_regions``: not the
12 layers' regions, each replay paying guards and wrappers), replaying CUDA graphs. One H100, same machine
(``bench/results/gpu_dec06_s7_h100.md``): eager 1,435 samples/s, regional graphs 1,907, **whole graphs 2,800 and
2,962** (two runs) against the plain Trainer's 1,294 (2.16x) and the bare compiled loop's 2,609 and 3,702 (that loop
is launch-bound itself and varied 17-25 ms a step between runs: 0.80-1.07 of it); eval loss 0.6844 / 0.6859 / 0.6855.
The Trainer alone on hfray's arguments: 17.5 ms a step whole, 18.8 regional, the bare loop 18.5-20.8.
Another H100, a faster host (``gpu_dec06_s8_h100.md``): whole graphs 3,723 samples/s, 0.99 of the bare compiled
loop (3,775) and 0.95 of that loop replaying CUDA graphs (3,901), 1.91x the plain Trainer (1,948; eager hfray 2,110).

The compile costs once. Before two of its three traces of the whole model were removed (the second step's: the
model's forward set ``config.problem_type`` on the first batch and Dynamo guards on it, now set when the model is
built, :func:`hfray.model.loading.classification_overrides`; the epoch's short last batch's, a new batch size compiled
again, as long as the first compile on CPU, now filled with ignored rows, :func:`padding_collator`), a cold 400-step
run took 102.9 s against eager's 53.1 (~60 s of compiling). After, the faster host (``gpu_dec06_s8_h100.md``): 50.0 s
against 34.2, i.e. ~21 s of compiling and recording once the 400 steps' saving (13.1 ms a step: 17.2 against 30.3) is
counted, so it pays back after ~1,600 steps on that host (the slower host above saved ~22 ms a step: sooner). Of
the 53 s less start-up (94.9 -> 42.0 s besides the steady steps), ~12-15 s is the host (the bare and eager rows'
start-up fell that much too): the two traces were ~40 s. Hence a threshold on the run's planned steps. A run whose
graphs are in the compile cache already (a re-run or resumed run of the same storage path, a sweep's later trials:
:func:`hfray.train.process.cache_holds`) pays next to nothing: 39.2 s against 98.1 s cold and eager's 53.1 for the
400 steps on the slower host (before the fix; not measured on the faster one), so it compiles whatever its steps.
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig, total_steps
from hfray.data import classification as data
from hfray.train import arguments, process, worker

GRAPHS_MIN_STEPS = 1_600  # planned optimizer steps from which compiling with CUDA graphs pays (see above)


def default_compile(job: JobConfig, use_gpu: bool, steps: int, warm: bool = False) -> JobConfig:
    """Compiled whole, replaying CUDA graphs, for a full fine-tune on one GPU that plans at least
    :data:`GRAPHS_MIN_STEPS` steps (or any number, ``warm``: its graphs in the compile cache already) and leaves
    ``training.torch_compile`` unset (and ``training.cuda_graphs`` not false);
    compiled jobs trace the whole model unless ``training.compile_regions`` says otherwise. Batches are then
    padded to multiples of 64 tokens (:func:`hfray.train.arguments.pad_multiple`: a few shapes, each recorded once).

    Not measured, so left eager: several workers (graphs are for one process; compiled alone was slower), adapters
    (PEFT), gradient checkpointing, DeepSpeed or FSDP, a compile mode in ``training.extra_args``.
    ``training.torch_compile: false`` (or ``cuda_graphs: false``) opts out; ``torch_compile: true`` or
    ``cuda_graphs: true`` compile whatever the steps (with graphs unless the job says ``cuda_graphs: false``)."""
    t = job.training
    if not use_gpu or job.peft is not None or job.resources.num_workers != 1 or t.torch_compile is False:
        return job
    asked = t.torch_compile or t.cuda_graphs  # the job's own word: compiled whatever the steps
    declined = t.cuda_graphs is False or t.gradient_checkpointing or "torch_compile_mode" in t.extra_args
    if not asked and (declined or (steps < GRAPHS_MIN_STEPS and not warm)):
        return job
    return arguments.default_compile(job, regions=False)


def resolve_on_worker(run: worker.WorkerRun, train_rows: int, labels: int) -> JobConfig:
    """The job with its speed default resolved for this worker's run, the process set for it (compile settings)."""
    steps = total_steps(run.job, train_rows, run.world_size)  # as the Trainer will count them
    warm = False
    if steps < GRAPHS_MIN_STEPS:  # short: compiled only where the cache holds its graphs (a long run: whatever)
        long_run = default_compile(run.job, run.use_gpu, GRAPHS_MIN_STEPS)  # what the job compiles to, if it does
        warm = long_run != run.job and process.cache_holds(long_run, compiled_setup(long_run, labels))
    job = worker.adopt(run, default_compile(run.job, run.use_gpu, steps, warm))
    if job != run.job and run.rank == 0 and run.job.training.torch_compile is None:  # the pause before step 1
        why = "its graphs in the compile cache" if steps < GRAPHS_MIN_STEPS else f"{steps:,} planned steps"
        print(f"[hfray] {why}: compiling with CUDA graphs (training.torch_compile=false: eager)")
    return job


def compiled_setup(job: JobConfig, labels: int) -> str:
    """The compiled classifier's setup (:func:`hfray.train.process.compiled_setup`): its label count shapes the head."""
    return process.compiled_setup(job, labels=labels)


def remember_compiled(run: worker.WorkerRun, job: JobConfig, labels: int) -> None:
    """After a compiled run trained (rank 0): its setup recorded in the compile cache, for the runs after it."""
    if job.training.torch_compile and run.rank == 0:
        process.remember_compiled(job, compiled_setup(job, labels))


def padding_collator(job: JobConfig, tokenizer: Any) -> Any:
    """Batches padded to their longest row (compiled: to a multiple of 64 tokens, :func:`arguments.pad_multiple`, and in
    one training process short batches filled up to the batch size with ignored rows,
    :class:`hfray.data.classification.FullBatches`: no compile of a new batch size at each epoch's end); those without
    padding lose their all-ones mask where ``training.drop_unpadded_masks`` resolves true."""
    from transformers import DataCollatorWithPadding

    multiple = arguments.pad_multiple(job)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    # One process only: with several, accelerate cuts the gathered evaluation batches at the dataset's remainder,
    # which would keep a rank's filling and drop another rank's real rows.
    if multiple is not None and job.resources.num_workers == 1:
        collator = data.FullBatches(collator, job.training.per_device_train_batch_size)
    return data.UnpaddedMaskDropped(collator) if arguments.drop_unpadded_masks(job) else collator
