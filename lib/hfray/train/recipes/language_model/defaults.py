"""The language-model recipe's speed defaults, resolved on each worker (it knows whether it trains on a GPU).

Causal-LM pre-training trains fixed-length packed blocks: every batch has one shape, so a compiled step compiles
once and its CUDA graphs record once (the last short batch of an epoch, and evaluation's, once more each).
"""

from __future__ import annotations

from hfray.config import JobConfig
from hfray.train import arguments


def default_compile(job: JobConfig, use_gpu: bool) -> JobConfig:
    """Causal-LM pre-training on GPUs, Liger not asked for, ``training.torch_compile`` not false: compiled (each decoder
    layer a region), with ``training.cuda_graphs`` unless the job says otherwise. One H100, the Llama-shaped 135M
    (SmolLM2), 16 x 1024 blocks, same warm machine: Liger eager (the default before) 97.3k tokens/s, 0.40 of the bare
    compiled step (244.8k); compiled 164.8k (0.67); compiled + CUDA graphs 225.1k (0.92); eval loss 8.5821 / 8.5777 /
    8.5821 (``bench/results/gpu_dec06_pm_h100.md``). Peak memory 19.1 GiB against Liger's 12.6: the compiled step
    materialises the logits Liger's fused cross-entropy never does (``torch_compile: false`` gives Liger back).
    The rest (strategies, one process for the graphs, ...): :func:`hfray.train.arguments.default_compile`.
    Masked-LM keeps its eager default: its compiled encoder was not measured against the bare step since it got the
    all-ones attention mask that lets sdpa pick cuDNN's fused kernel (``mlm_loss_on_masked_only``)."""
    if job.task != "causal-lm" or not use_gpu or job.training.liger_kernel:
        return job
    return arguments.default_compile(job)
