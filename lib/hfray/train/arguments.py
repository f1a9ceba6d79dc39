"""From a job's training section to ``transformers.TrainingArguments``.

Shared by the driver (which builds them once, only to surface mistakes in ``training.extra_args``
before any worker starts) and by each worker.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from typing import Any

from hfray.config import JobConfig
from hfray.config.training import training_argument_names
from hfray.errors import ConfigError, Problem
from hfray.model import varlen
from hfray.train.scaleout import strategy_arguments, strategy_problems
from hfray.train.tracking.mlflow import mlflow_problems


def _checkpointing_arg() -> str:
    """transformers 5.2x renamed ``gradient_checkpointing`` to ``activation_checkpointing``; older 5.x lack it."""
    new_name = "activation_checkpointing"
    return new_name if new_name in training_argument_names() else "gradient_checkpointing"


def _length_grouping(on: bool) -> dict[str, Any]:
    """transformers 5.2x replaced ``group_by_length`` with ``train_sampling_strategy``; older 5.x lack it."""
    if "train_sampling_strategy" in training_argument_names():
        return {"train_sampling_strategy": "group_by_length"} if on else {}
    return {"group_by_length": on}


# /proc/cpuinfo flags of CPUs that multiply bf16 in hardware: Intel AMX (Sapphire Rapids on), AVX512-BF16 (Intel
# Cooper Lake on, AMD Zen 4 on). Elsewhere oneDNN emulates bf16 and autocast is no faster than fp32.
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# TRL's trainers on CPU keep fp32 under auto: LoRA SFT of SmolLM2-135M (jobs/smollm2_sft_lora.yaml) in bf16 ran 1.31x
# faster end to end on the AMX VM but ended 12 steps with its eval loss 0.8% higher (4.027 vs 3.995): not the same
# results, so bf16 stays the job's choice there (training.precision: bf16).
CPU_BF16_EXCLUDED_TASKS = ("sft", "dpo", "grpo")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this host's CPU multiplies bf16 in hardware, read from Linux's ``/proc/cpuinfo`` (other systems: no)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return not CPU_BF16_FLAGS.isdisjoint(flags)


def cpu_bf16_by_default(job: JobConfig) -> bool:
    """``training.precision: auto`` on a CPU worker: bf16 autocast where the CPU has it natively. The embedded
    default job (MiniLM, 2 x 1 CPU) ran 1.5x faster end to end with the same f1, accuracy, precision and recall to 4
    digits (``bench/results/default_job_e2e_cpu_dec05_bf16.md``); weights, checkpoints and the artifact stay fp32."""
    return job.task not in CPU_BF16_EXCLUDED_TASKS and cpu_has_native_bf16()


def precision_flags(job: JobConfig, use_gpu: bool) -> dict[str, bool]:
    """``training.precision`` as the Trainer's flags. auto: bf16 on GPUs that have it (else fp16), and on CPUs that
    have it (:func:`cpu_bf16_by_default`; else fp32)."""
    precision = job.training.precision
    if precision == "auto":
        if not use_gpu:
            return {"bf16": True} if cpu_bf16_by_default(job) else {}
        import torch

        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


LIGER_TASKS = ("causal-lm", "sft", "dpo")
# On by default where measured as a plain swap of kernels; DPO (TRL's own Liger loss path) only when asked for.
LIGER_DEFAULT_TASKS = ("causal-lm", "sft")
LIGER_PIN = "liger-kernel==0.8.5"  # the gpu extra of pyproject.toml
CUDA_GRAPHS_MODE = "reduce-overhead"  # the torch.compile mode of training.cuda_graphs
RECORDING_COMPILE_MODES = (CUDA_GRAPHS_MODE, "max-autotune")  # the torch.compile modes that record CUDA graphs
COMPILED_PAD_MULTIPLE = 64  # a compiled job's padded batches: lengths in steps of this many tokens (pad_multiple)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_by_default(job: JobConfig) -> bool:
    """Whether a GPU job of this kind gets Liger's kernels unless it says otherwise: causal-LM and full-parameter SFT,
    not compiled (causal-LM is compiled on GPUs unless the job says ``torch_compile: false``: the recipe's
    ``language_model.defaults``, resolved before these arguments). Not SFT with a PEFT adapter: LoRA SFT of the
    SmolLM2-135M shape on one H100 ran 12-14% faster without them, three times over two days
    (``bench/results/throughput_gpu_dec05_varlen_h100.md``)."""
    if job.task not in LIGER_DEFAULT_TASKS or job.training.torch_compile:
        return False
    return not (job.task == "sft" and job.peft is not None)


def use_liger(job: JobConfig, use_gpu: bool) -> bool:
    """training.liger_kernel, or its default (:func:`liger_by_default`) on GPUs where liger-kernel is installed."""
    if job.training.liger_kernel is not None:
        return job.training.liger_kernel
    return use_gpu and liger_by_default(job) and liger_available()


def gpu_input_pipeline(use_gpu: bool) -> dict[str, Any]:
    """GPU jobs: host->device copies of pinned batches that overlap compute (``non_blocking``).

    Persistent loader workers were tried and left out: re-forking workers draws their seed from torch's global
    generator each epoch, so keeping them shifts dropout's random stream and the loss curve from epoch 2 on
    (tests/train/test_speed_options.py)."""
    return {"dataloader_pin_memory": True, "accelerator_config": {"non_blocking": True}} if use_gpu else {}


def build_kwargs(job: JobConfig, output_dir: str, use_gpu: bool, scale_out: bool = True) -> dict[str, Any]:
    """TrainingArguments of a job; ``scale_out=False`` leaves out DeepSpeed/FSDP (driver-side checks:
    those integrations import DeepSpeed and set accelerate's environment variables in the process)."""
    t, ev = job.training, job.evaluation
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "weight_decay": t.weight_decay,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "optim": t.optim,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "eval_strategy": t.eval_strategy,
        "save_strategy": t.eval_strategy,
        "logging_steps": t.logging_steps,
        _checkpointing_arg(): t.gradient_checkpointing,
        "dataloader_num_workers": t.dataloader_num_workers,
        "torch_compile": t.torch_compile,
        **compile_mode(job),
        "use_liger_kernel": use_liger(job, use_gpu),
        **gpu_input_pipeline(use_gpu),
        **_length_grouping(t.group_by_length),
        "load_best_model_at_end": ev.load_best_model_at_end,
        "metric_for_best_model": ev.metric_for_best_model,
        "greater_is_better": ev.best_mode == "max",
        "save_total_limit": job.storage.num_to_keep,
        "use_cpu": not use_gpu,
        "report_to": "none",
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
        # The Trainer's NaN/inf loss filter reads the loss on the host every step (a GPU sync: the Python side
        # can no longer run ahead of the GPU); 5% of the step time for BERT-base at batch 256 on an H200. Without
        # it a NaN loss shows in the logs as NaN. Opt out with training.extra_args.logging_nan_inf_filter: true.
        "logging_nan_inf_filter": not use_gpu,
        **precision_flags(job, use_gpu),
    }
    if t.eval_strategy == "steps":
        kwargs["eval_steps"] = t.eval_steps
        kwargs["save_steps"] = t.eval_steps * t.checkpoint_every_n_evals  # type: ignore[operator]
    if scale_out:
        kwargs.update(strategy_arguments(t.strategy))
    kwargs.update(t.extra_args)
    return kwargs


def compile_mode(job: JobConfig) -> dict[str, str]:
    """``training.cuda_graphs`` as the Trainer's compile mode: reduce-overhead replays each compiled region as a CUDA
    graph (Inductor's CUDA-graph trees). Nothing where the job's ``extra_args`` name a mode (they win)."""
    t = job.training
    return {"torch_compile_mode": CUDA_GRAPHS_MODE} if t.torch_compile and t.cuda_graphs else {}


def pad_multiple(job: JobConfig) -> int | None:
    """The ``pad_to_multiple_of`` of a compiled job's padding collator (classification, token classification, QA,
    seq2seq, DPO): batches padded to the longest row would give the compiled step a new shape nearly every batch
    (Dynamo compiles it again, then with a dynamic length; CUDA graphs record each shape). In steps of
    :data:`COMPILED_PAD_MULTIPLE` tokens there are at most ``data.max_length / 64`` shapes. The step is the largest
    divisor of ``data.max_length`` up to 64 (50 for 100, ``max_length`` itself under 64): rows are cut at
    ``max_length``, so no batch is padded past it (nor past a model's positions sized to it). The padding is masked:
    the loss is the unpadded batch's (``tests/train/test_speed_options.py``). None (the longest row) when eager."""
    if not job.training.torch_compile:
        return None
    n = job.data.max_length
    return next(m for m in range(min(COMPILED_PAD_MULTIPLE, n), 0, -1) if n % m == 0)


def cudnn_attention(job: JobConfig) -> bool:
    """Whether sdpa may pick cuDNN's attention (``training.cudnn_attention``): the job's word, else only when compiled.

    cuDNN plans each new batch shape (~110 ms of host time on an H100, then cached): an eager job's batches padded to
    their longest take a new length nearly every step at first. Compiled jobs pad to a few lengths
    (:func:`pad_multiple`) or train fixed blocks, and were measured with cuDNN on (masked-LM: its fused masked
    attention)."""
    t = job.training
    return bool(t.torch_compile) if t.cudnn_attention is None else t.cudnn_attention


def drop_unpadded_masks(job: JobConfig) -> bool:
    """Whether a classification batch without padding goes without its attention mask (``training.
    drop_unpadded_masks``): the job's word, else only when eager. Compiled jobs keep the mask: on one H100, BERT-base
    64 x 128 with CUDA graphs, every batch unpadded, dropping it ran 591 samples/s against 1,163 keeping it (not
    explained; ``bench/results/gpu_dec06_s6_h100.md``)."""
    t = job.training
    return not t.torch_compile if t.drop_unpadded_masks is None else t.drop_unpadded_masks


def replays_cuda_graphs(compiled: bool | None, cuda_graphs: bool | None, mode: str | None) -> bool:
    """Whether a compiled model's regions replay CUDA graphs: ``training.cuda_graphs``, or a compile ``mode`` that
    records them (the job's ``extra_args`` or the Trainer's resolved one)."""
    return bool(compiled) and (bool(cuda_graphs) or mode in RECORDING_COMPILE_MODES)


def default_compile(job: JobConfig, graphs: bool = True, regions: bool = True) -> JobConfig:
    """A job a recipe compiles by default (the recipe's own conditions met; ``training.torch_compile`` unset or true):
    compiled, and replaying CUDA graphs where that was measured to pay (``graphs``: the recipe's say). Nothing under
    DeepSpeed or FSDP (their parameter hooks and sharded gathers around a compiled region: not measured). Graphs only
    for one training process (one H100: causal-LM pre-training and packed LoRA SFT, same loss; with DDP the reducer's
    gradient buckets meet the graphs' memory pool: not measured here, and reported to crash evaluations between training
    steps, pytorch/pytorch#128218; ``cuda_graphs: true`` asks), not with ``training.gradient_checkpointing`` (its
    backward runs a region's forward again inside the step), nor where the job's ``extra_args`` name a compile mode
    (theirs wins) or the job says ``cuda_graphs`` itself. ``regions`` false: the whole model one graph where the job
    leaves ``training.compile_regions`` unset (the recipe's say)."""
    t = job.training
    if t.torch_compile is False or t.strategy != "ddp":
        return job
    update: dict[str, bool] = {"torch_compile": True}
    one_process = job.resources.num_workers == 1
    if (
        graphs
        and t.cuda_graphs is None
        and "torch_compile_mode" not in t.extra_args
        and not t.gradient_checkpointing
        and one_process
    ):
        update["cuda_graphs"] = True
    if not regions and t.compile_regions is None:
        update["compile_regions"] = False
    return job.model_copy(update={"training": t.model_copy(update=update)})


def _cuda_graph_problems(job: JobConfig) -> list[Problem]:
    t = job.training
    if t.cuda_graphs is None:
        return []
    if "torch_compile_mode" in t.extra_args:
        mode = t.extra_args["torch_compile_mode"]
        return [Problem("training.cuda_graphs", f"set, and training.extra_args.torch_compile_mode {mode!r}: pick one")]
    problems = []
    if t.cuda_graphs and t.torch_compile is False:
        problems.append(Problem("training.cuda_graphs", "replays compiled regions: needs training.torch_compile"))
    if t.cuda_graphs and job.resources.gpus_per_worker == 0:
        problems.append(Problem("training.cuda_graphs", "needs GPUs (resources.gpus_per_worker > 0): CUDA graphs"))
    return problems


def _liger_problems(job: JobConfig) -> list[Problem]:
    if not job.training.liger_kernel:
        return []
    if job.task not in LIGER_TASKS:
        return [Problem("training.liger_kernel", f"Liger's kernels are for {', '.join(LIGER_TASKS)} jobs")]
    if job.resources.gpus_per_worker == 0:
        return [Problem("training.liger_kernel", "needs GPUs (resources.gpus_per_worker > 0): Triton kernels")]
    if not liger_available():
        return [Problem("training.liger_kernel", f"liger-kernel is not installed (pip install '{LIGER_PIN}')")]
    return []


# model.attn_implementation's FlashAttention kernels and the package each needs
ATTENTION_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def _attention_problems(job: JobConfig) -> list[Problem]:
    """``model.attn_implementation``: the GPU-only kernels need GPUs (flex_attention has no backward on CPU) and
    flash attention its package, said before any worker starts."""
    impl = job.model.attn_implementation
    if impl not in ("flex_attention", "varlen", *ATTENTION_PACKAGES):
        return []
    if job.resources.gpus_per_worker == 0:
        return [Problem("model.attn_implementation", f"{impl} trains on GPUs only (resources.gpus_per_worker > 0)")]
    if impl == "varlen" and job.task == "grpo":
        return [Problem("model.attn_implementation", "varlen does not generate; a grpo job samples: use sdpa")]
    if impl == "varlen" and not varlen.available():
        return [Problem("model.attn_implementation", "varlen needs torch >= 2.10 (torch.nn.attention.varlen)")]
    package = ATTENTION_PACKAGES.get(impl)
    if package and importlib.util.find_spec(package) is None:
        return [Problem("model.attn_implementation", f"{impl} needs the {package} package, which is not installed")]
    return []


def training_arguments(job: JobConfig, output_dir: str, use_gpu: bool, scale_out: bool = True) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(**build_kwargs(job, output_dir, use_gpu, scale_out))


def check_training_arguments(job: JobConfig) -> None:
    """Cross-section checks, then TrainingArguments itself, before Ray starts anything."""
    problems = []
    if job.training.eval_strategy == "epoch" and job.training.checkpoint_every_n_evals != 1:
        problems.append(
            Problem("training.checkpoint_every_n_evals", "must be 1 when training.eval_strategy is 'epoch'")
        )
    if job.training.precision == "fp16" and job.resources.gpus_per_worker == 0:
        problems.append(Problem("training.precision", "fp16 needs GPUs (resources.gpus_per_worker > 0)"))
    problems += _liger_problems(job) + _attention_problems(job) + _cuda_graph_problems(job)
    res = job.resources
    problems += strategy_problems(job.training.strategy, res.gpus_per_worker, res.num_workers)
    problems += mlflow_problems(job)
    if problems:
        raise ConfigError(problems, "job")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            training_arguments(job, tmp, use_gpu=False, scale_out=False)
        except (ValueError, TypeError) as exc:
            raise ConfigError([Problem("training", f"transformers.TrainingArguments rejected it: {exc}")]) from None
