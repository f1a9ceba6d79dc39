"""Process-wide settings of a worker process for ``training.torch_compile``: the compile cache kept with the run's
storage, accelerate's regional-compilation switch, Dynamo's state, and sdpa's cuDNN attention.

Runs on Ray Train workers (``hfray.train.worker.limit_threads`` / ``adopt``) and in tests; imports torch inside.
"""

from __future__ import annotations

import os

from hfray.config import JobConfig
from hfray.train.arguments import cudnn_attention

# accelerate's switch for regional compilation (TrainingArguments has no field for it); read when the Trainer
# builds its Accelerator, so it is set in the worker before that
REGIONAL_ENV = "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"


def compile_settings(job: JobConfig) -> None:
    """``training.torch_compile``'s process settings: the compile cache of a local storage path
    (:func:`compile_cache_dir`), ``training.compile_regions``, none of Dynamo's graphs from before, and whether sdpa
    may pick cuDNN's attention (``training.cudnn_attention``: by default only compiled). Set, not defaulted: a reused
    trial process may have run a job with other settings."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(cudnn_attention(job))  # a process-wide switch; no-op off CUDA
    cache = compile_cache_dir(job)
    if cache:  # Inductor's FX-graph and Triton caches: re-runs, resumed runs and trials skip the compile
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
    if job.training.torch_compile and job.training.compile_regions is not False:  # unset: regional
        os.environ[REGIONAL_ENV] = "1"
    else:
        os.environ.pop(REGIONAL_ENV, None)
    if job.training.torch_compile:
        import torch._dynamo

        # A reused process (an in-process sweep trial) keeps Dynamo's graphs of the jobs before it. Each new shape
        # (another LoRA rank, batch size) compiles on top of them up to Dynamo's recompile limit (8 per function),
        # then its layers run eager without a word: on 2 CPUs from a sweep's fifth LoRA rank on. Each job starts
        # from none; Inductor's cache on disk keeps compiling a shape seen before quick.
        torch._dynamo.reset()


def compile_cache_dir(job: JobConfig) -> str | None:
    """``<storage.path>/.hfray_cache/compile`` for compiled jobs on a local (or shared-mount) storage path."""
    path = job.storage.path
    if not job.training.torch_compile or "://" in path:
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(path)), ".hfray_cache", "compile")
