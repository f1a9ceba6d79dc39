"""The language-model recipe's speed defaults, resolved on each worker once its model exists (the worker knows
whether it trains on a GPU, and which architecture the job built).

Pre-training trains fixed-length packed blocks: every batch has one shape, so a compiled step compiles once and its
CUDA graphs record once (the last short batch of an epoch, and evaluation's, once more each).
"""

from __future__ import annotations

from hfray.config import JobConfig
from hfray.train import arguments

# Masked LMs whose encoder hfray compiles alone, its masked-positions head eager (``mlm_loss_on_masked_only``):
# BERT and ModernBERT (its own sparse head) measured; RoBERTa's encoder is BERT's code (transformers copies it).
COMPILED_ENCODERS = frozenset({"bert", "roberta", "modernbert"})


def default_compile(job: JobConfig, use_gpu: bool, model_type: str) -> JobConfig:
    """``training.torch_compile`` unset (or true) on a GPU, Liger not asked for: compiled where it was measured to pay.

    Causal-LM: each decoder layer a region, with ``training.cuda_graphs`` unless the job says otherwise. One H100,
    the Llama-shaped 135M (SmolLM2), 16 x 1024 blocks, same warm machine: Liger eager (the default before) 97.3k
    tokens/s, 0.40 of the bare compiled step (244.8k); compiled 164.8k (0.67); compiled + CUDA graphs 225.1k (0.92);
    eval loss 8.5821 / 8.5777 / 8.5821 (``bench/results/gpu_dec06_pm_h100.md``). Peak memory 19.1 GiB against
    Liger's 12.6: the compiled step materialises the logits Liger's fused cross-entropy never does
    (``torch_compile: false`` gives Liger back).

    Masked-LM (:data:`COMPILED_ENCODERS`, ``lm.mlm_loss_on_masked_only`` on): the encoder compiled, without CUDA
    graphs. One H100, BERT-base, 256 x 128 blocks, same warm machine: eager 3,379 samples/s (0.79 of the bare
    compiled step's 4,254), compiled 4,039 (0.95), compiled + graphs 3,095 (0.73: the eager head's masked count
    differs every step, so each step leaves the graphs, we think: not profiled); eval loss 7.000 / 6.934 / 7.052
    (``bench/results/gpu_dec06_eve_h100.md``). ModernBERT-base, 256 x 128, 150 steps, another H100: eager 1,547
    samples/s (0.55 of the bare compiled step's 2,834), compiled 2,634 (0.93 of that lease's bare 2,845); eval loss
    6.5436 / 6.4293 (``bench/results/gpu_dec06_s7_h100.md``; the encoder one graph, no break, on CPU).

    The rest (strategies, one process for the graphs, ...): :func:`hfray.train.arguments.default_compile`."""
    if not use_gpu or job.training.liger_kernel:
        return job
    if job.task == "causal-lm":
        return arguments.default_compile(job)
    lm = job.lm
    if job.task == "masked-lm" and lm is not None and lm.mlm_loss_on_masked_only and model_type in COMPILED_ENCODERS:
        return arguments.default_compile(job, graphs=False)
    return job
