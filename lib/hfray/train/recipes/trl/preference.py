"""LoRA DPO's speed defaults, resolved on each worker (it knows whether it trains on a GPU).

Why compiled: a LoRA DPO step of a small decoder is hundreds of small elementwise kernels (RMSNorm's fp32 upcast,
rotary, the LoRA branches, autocast's casts) run eagerly twice (the policy with its adapter, the reference without);
on one H100, SmolLM2-135M's shape, 16 pairs of 1,024 tokens, device busy 349 of a 625 ms step, 231 ms of it
elementwise (``bench/results/gpu_dec06_pm_h100.md``). Compiled, Inductor fuses them.

Why padded to a multiple: TRL pads each batch to its longest pair, so real preference data (pairs of every length)
would give a compiled step a new shape almost every batch. Padded to a multiple of 64 tokens
(:func:`hfray.train.arguments.pad_multiple`) there are at most ``data.max_length / 64`` shapes, and Dynamo compiles
the step twice (the second time with a dynamic length), not once per batch. The padding is masked out: the loss is
that of the unpadded batch (``tests/train/test_compile.py``).
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.train import arguments


def default_compile(job: JobConfig, use_gpu: bool) -> JobConfig:
    """``training.torch_compile`` unset (or true) on LoRA DPO on GPUs, Liger not asked for: compiled, each decoder
    layer a region. One H100, SmolLM2-135M's shape, LoRA r 16 on every linear layer, 16 pairs x 1,024 tokens, one
    warm machine: the bare compiled step 131.4k tokens/s, TRL's own ``DPOTrainer`` 56.8k; hfray compiled 126.9k
    (0.97 of bare, 2.2x TRL), compiled + CUDA graphs 137.4k (1.05), Liger eager 106.3k (eager, Liger off: 68.7k,
    0.47 of a bare 145.4k, in an earlier lease) (``bench/results/gpu_dec06_eve_h100.md``).

    CUDA graphs are not defaulted here (``training.cuda_graphs: true`` asks): measured on fixed-length pairs only;
    real pairs give a few shapes (:func:`padding`), each recording graphs of its own, not measured. Not measured,
    so not defaulted either: full-parameter DPO, QLoRA and other adapters; the rest (strategies):
    :func:`hfray.train.arguments.default_compile`."""
    peft = job.peft
    if job.task != "dpo" or not use_gpu or job.training.liger_kernel or peft is None or peft.method != "lora":
        return job
    return arguments.default_compile(job, graphs=False)


def padding(job: JobConfig) -> dict[str, Any]:
    """``DPOConfig`` arguments of a compiled DPO job (by default or the job's ``torch_compile: true``): batches padded
    to a multiple of 64 tokens (:func:`hfray.train.arguments.pad_multiple`). Eager jobs get no key, so TRL's own
    default (``"auto"``, not None) stays."""
    multiple = arguments.pad_multiple(job)
    return {"pad_to_multiple_of": multiple} if multiple else {}
