"""Text classification's speed defaults, resolved on each worker once the tokenized data exists (the worker knows
whether it trains on a GPU, and how many optimizer steps the run plans): CUDA graphs for long runs on one GPU, and
batches without padding sent without their all-ones mask (:func:`padding_collator`).

A classifier's eager step is host-bound on a GPU: one H100, BERT-base, 64 x 128 tokens, the plain Trainer and hfray
alike ran 44-49 ms a step, a bare loop of the same model 42 ms (Python launching each kernel, the backward's ~20 ms
most of it; ``bench/cls_step_probe.py --cprofile``).
Compiled with CUDA graphs the step replays instead of launching: 1,869 samples/s against eager's 1,305 (1.43x; 0.80
of the bare compiled step, 1.48x the plain Trainer), eval loss 0.6845 / 0.6852; the Trainer alone on hfray's
arguments, graphs, 30.6 ms a step against the bare compiled loop's 27.9 (0.91). Compiled without graphs it was
slower than eager (1,017 against 1,153; 58.7 ms a step in the probe): Inductor's Python wrappers launch each Triton
kernel (~460 a step), so graphs or nothing (``bench/results/gpu_dec06_s6_h100.md``). The compile costs once: the
same 200-step run took 55.3 s against eager's 32.9 s on a cold compile cache, about 25 s, which the ~15 ms a step
saved pays back after ~1,700 steps (``bench/results/gpu_dec06_late_h100.md``). Hence a threshold on the run's
planned steps. Open: another H100 lease ran the graphs setting at 1,163 samples/s (0.34 of its bare step; eager not
run there), not explained.
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig, total_steps
from hfray.data import classification as data
from hfray.train import arguments, worker

GRAPHS_MIN_STEPS = 2_000  # planned optimizer steps from which compiling with CUDA graphs pays (see above)


def default_compile(job: JobConfig, use_gpu: bool, steps: int) -> JobConfig:
    """Compiled, replaying CUDA graphs, for a full fine-tune on one GPU that plans at least :data:`GRAPHS_MIN_STEPS`
    steps and leaves ``training.torch_compile`` unset (and ``training.cuda_graphs`` not false). Batches are then
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
    if not asked and (steps < GRAPHS_MIN_STEPS or declined):
        return job
    return arguments.default_compile(job)


def resolve_on_worker(run: worker.WorkerRun, train_rows: int) -> JobConfig:
    """The job with its speed default resolved for this worker's run, the process set for it (compile settings)."""
    steps = total_steps(run.job, train_rows, run.world_size)  # as the Trainer will count them
    job = worker.adopt(run, default_compile(run.job, run.use_gpu, steps))
    if job != run.job and run.rank == 0 and run.job.training.torch_compile is None:  # the pause before step 1
        print(f"[hfray] {steps:,} planned steps: compiling with CUDA graphs (training.torch_compile=false: eager)")
    return job


def padding_collator(job: JobConfig, tokenizer: Any) -> Any:
    """Batches padded to their longest row (compiled: to a multiple of 64 tokens, :func:`arguments.pad_multiple`);
    those without padding lose their all-ones mask where ``training.drop_unpadded_masks`` resolves true."""
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=arguments.pad_multiple(job))
    return data.UnpaddedMaskDropped(collator) if arguments.drop_unpadded_masks(job) else collator
