"""Process-wide settings of a worker process: for ``training.torch_compile`` the compile cache kept with the run's
storage (and the compiled setups it holds), accelerate's regional-compilation switch, Dynamo's state, and sdpa's cuDNN
attention; the garbage collector while training (:func:`frozen_setup`).

Runs on Ray Train workers (``hfray.train.worker.limit_threads`` / ``adopt``) and in tests; imports torch inside.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from hfray.config import JobConfig
from hfray.train.arguments import cudnn_attention

# In the compile cache: the compiled setups whose graphs a run traced into it (:func:`remember_compiled`)
COMPILED_SETUPS = "hfray_compiled_setups.json"

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


def compiled_setup(job: JobConfig, **shape: Any) -> str:
    """A key for the graphs a compiled run traces: the model, the task, the training keys that shape the graphs, the
    recipe's ``shape`` (a classifier's label count, ...), torch's version and the device. Runs of one key (a re-run, a
    resumed run, sweep trials that differ in learning rate) trace the same graphs: Inductor's cache holds them."""
    import torch

    t = job.training
    record = {
        "model": job.model.model_dump(mode="json"),
        "task": job.task,
        "batch": t.per_device_train_batch_size,
        "max_length": job.data.max_length,
        "training": [t.precision, t.torch_compile, t.compile_regions, t.cuda_graphs, t.gradient_checkpointing],
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **shape,
    }
    return hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_holds(job: JobConfig, setup: str) -> bool:
    """Whether a run of the compiled ``job``'s setup (:func:`compiled_setup`) trained into its compile cache before."""
    cache = compile_cache_dir(job)
    return cache is not None and setup in _setups(cache)


def remember_compiled(job: JobConfig, setup: str) -> None:
    """Records ``setup`` in the compiled ``job``'s compile cache once its run trained (rank 0); replaced whole, so a
    reader never sees half a record."""
    cache = compile_cache_dir(job)
    if cache is None:
        return
    setups = {**_setups(cache), setup: time.time()}
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, COMPILED_SETUPS)
    staged = f"{path}.{os.getpid()}"
    with open(staged, "w") as f:
        json.dump(setups, f)
    os.replace(staged, path)


def _setups(cache: str) -> dict[str, float]:
    try:
        with open(os.path.join(cache, COMPILED_SETUPS)) as f:
            return dict(json.load(f))
    except (OSError, ValueError, TypeError):  # none yet, or not a record: a cold cache, as far as hfray knows
        return {}


@contextlib.contextmanager
def frozen_setup() -> Iterator[None]:
    """While training, the objects that exist before it (the imports', Ray's, the model's: ~500k in a worker) are out
    of the garbage collector's reach (``gc.freeze``), and back after (``gc.unfreeze``: a reused process, an in-process
    trial, frees what it no longer holds). Python's full collection walks every tracked object: ~300 ms on 2 CPUs,
    the training thread paused at some step (a tiny BERT's 400 steps: one full collection of 302-306 ms, 0 frozen;
    ``bench/gc_pause_cpu.py``). Objects made while training are collected as before. Also copy-on-write friendlier
    for the DataLoader workers forked after it."""
    gc.collect()  # what is already garbage goes now, not frozen with the rest
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
