"""``training:``: the Hugging Face Trainer's knobs that hfray exposes, plus ``extra_args`` passed through verbatim.

``extra_args`` is checked against ``transformers.TrainingArguments``' fields here (importing transformers only
when the job sets any), and refused for the keys hfray derives from other sections (:data:`MANAGED`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hfray.config.section import Section

# Keys hfray derives from the job file; setting them in extra_args would silently fight hfray.
MANAGED = {
    "output_dir": "storage.path",
    "eval_strategy": "training.eval_strategy",
    "save_strategy": "training.eval_strategy",
    "save_steps": "training.checkpoint_every_n_evals",
    "load_best_model_at_end": "evaluation.load_best_model_at_end",
    "metric_for_best_model": "evaluation.metric_for_best_model",
    "greater_is_better": "evaluation.greater_is_better",
    "save_total_limit": "storage.num_to_keep",
    "use_cpu": "resources.gpus_per_worker",
    "bf16": "training.precision",
    "activation_checkpointing": "training.gradient_checkpointing",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "fp16": "training.precision",
    "resume_from_checkpoint": "storage (hfray resumes from Ray's latest checkpoint)",
    "torch_compile": "training.torch_compile",
    "use_liger_kernel": "training.liger_kernel",
    "group_by_length": "training.group_by_length",
    "train_sampling_strategy": "training.group_by_length",
    "deepspeed": "training.strategy",
    "fsdp": "training.strategy",
    "fsdp_config": "training.strategy",
}


@functools.cache
def training_argument_names() -> frozenset[str]:
    """The fields of ``transformers.TrainingArguments`` (imports transformers: seconds, so only when needed)."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


class TrainingConfig(Section):
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: train for num_train_epochs.")
    per_device_train_batch_size: int = Field(16, ge=1)
    per_device_eval_batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: float = Field(0.0, ge=0, description="Steps, or a fraction of all steps if < 1.")
    lr_scheduler_type: str = "linear"
    optim: str = Field("adamw_torch_fused", description="transformers optimizer name; fused AdamW by default.")
    max_grad_norm: float = Field(1.0, ge=0)
    seed: int = 42
    eval_strategy: Literal["steps", "epoch"] = "epoch"
    eval_steps: int | None = Field(None, ge=1, description="Required when eval_strategy is 'steps'.")
    checkpoint_every_n_evals: int = Field(1, ge=1, description="A checkpoint is saved every N evaluations.")
    logging_steps: int = Field(10, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on GPU (fp16 where it has no bf16); on CPU bf16 autocast where the CPU multiplies bf16 "
        "natively (AMX, AVX512-BF16: 1.4-1.5x fp32 for MiniLM, same results; not sft/dpo/grpo), else fp32. "
        "fp32 opts out.",
    )
    gradient_checkpointing: bool = False
    strategy: Literal["ddp", "zero2", "zero3", "zero3-offload", "fsdp"] = Field(
        "ddp",
        description="How workers share the model: ddp (replicas), zero2/zero3/zero3-offload (DeepSpeed, GPU), "
        "fsdp (PyTorch FSDP); through the HF Trainer's own integrations (hfray.train.scaleout).",
    )
    early_stopping_patience: int | None = Field(None, ge=1, description="Evaluations without improvement.")
    early_stopping_threshold: float = Field(0.0, ge=0)
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    dataloader_num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes; default 2 on GPU jobs, 0 on CPU. 0 was faster on an H200 for "
        "pre-collated in-memory data, 2 for classification batches padded by the tokenizer "
        "(bench/results/throughput_gpu_dec01.md).",
    )
    group_by_length: bool = Field(
        False, description="Batch texts of similar length (less padding); default on for GPU classification jobs."
    )
    torch_compile: bool | None = Field(
        None,
        description="torch.compile the model (HF Trainer's integration; masked-lm compiles the encoder, its head on "
        "masked positions runs eager; packed SFT batches get one shape: rows padded to data.max_length, or the varlen "
        "kernel's flat row padded to batch x data.max_length; padded batches of the other tasks, dpo included, are "
        "padded to a multiple of 64 tokens (of a divisor of data.max_length under 64): a few shapes, not one per "
        "batch). Default: on GPUs, on for causal-lm "
        "pre-training (Liger not asked for; with cuda_graphs: on an H100 0.92 of the bare compiled step against Liger"
        " eager's 0.40, same loss, peak memory 19.1 against 12.6 GiB) and packed LoRA SFT on the varlen kernel (with "
        "cuda_graphs: 0.88-0.92 of the bare compiled step, same loss), masked-lm with a BERT-family encoder (0.95 of "
        "the bare step against eager's 0.79; the default itself 0.84 in one run, 0.94 over 300 steps) or ModernBERT "
        "(0.93 against eager's 0.55) and LoRA dpo "
        "(0.87-0.99 against eager's 0.47; batches padded to a multiple of 64 tokens; on pairs of many lengths 2.2x "
        "eager), text-classification full fine-tunes on one GPU whose run plans >= 1,600 steps (whole model, with "
        "cuda_graphs: 1.76-2.06x eager, 1.91-2.16x the plain Trainer and 0.99 of the bare compiled loop on an H100; "
        "a cold compile of ~21 s pays back after ~1,600 steps, so shorter runs stay eager unless a compiled run of "
        "the same setup trained into the storage path's compile cache before); off "
        "elsewhere and under DeepSpeed/FSDP; false opts out (causal-lm: Liger again). The compile "
        "cache is kept under <storage.path>/.hfray_cache/compile, so re-runs, resumed runs and sweep trials of a "
        "local storage path reuse it.",
    )
    compile_regions: bool | None = Field(
        None,
        description="With torch_compile: compile each repeated block (a decoder or encoder layer) once and run that "
        "code for every layer (accelerate's regional compilation) instead of tracing the whole model, so the cold "
        "compile does not grow with depth (2 CPUs, packed LoRA SFT of a Llama, first step: 4 / 8 / 16 layers 30.6 / "
        "41.3 / 62.1 s whole, 23.5 / 23.7 / 24.1 s regional; same losses). false: one graph of the whole model. "
        "Default: regional, except text-classification, whole (one H100, BERT-base 64 x 128 with cuda_graphs: "
        "2,800-2,962 samples/s whole against 1,907 regional, whose 12 graph replays a step each pay guards and "
        "wrappers; the cold compile ~35 s longer). masked-lm compiles its encoder itself: whole by default "
        "(measured on GPUs), each encoder layer where this says true (2 CPUs, a 22-layer ModernBERT: first step "
        "18.9-33.6 s against 50.3-56.1 s whole, the same losses; GPU steps not measured yet).",
    )
    cuda_graphs: bool | None = Field(
        None,
        description="With torch_compile on GPUs: replay each compiled region's kernels as a CUDA graph (torch.compile "
        "mode reduce-overhead), so the host launches a graph instead of each kernel. Default: on where hfray compiles "
        "by default, for one training process (resources.num_workers 1: with DDP not measured) without "
        "gradient_checkpointing (GPU causal-lm pre-training: on one H100 1.37x the compiled step "
        "without graphs; packed LoRA SFT on the varlen kernel: 1.31-1.42x; the same loss and peak memory), not for "
        "masked-lm (0.73 of the bare step against 0.95 without; not profiled) nor dpo "
        "(1.05 against 0.97 on pairs of one length; pairs of many lengths not measured); text-classification where "
        "it compiles by default (whole model: 1.95-2.06x its eager step); off elsewhere; false opts "
        "out; true turns torch_compile on where it is unset. Each new batch shape records a "
        "graph (evaluation too) in memory kept for the run.",
    )
    liger_kernel: bool | None = Field(
        None,
        description="Liger's Triton kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) for the decoder "
        "families liger-kernel supports (Llama, Mistral, Qwen, Gemma, ...; others train unchanged). Default: on for "
        "GPU full-parameter sft jobs, and causal-lm ones with torch_compile: false (compiled by default), when "
        "liger-kernel is installed (pip install 'hfray[gpu]'); less memory (no logits tensor); not "
        "for sft with a peft adapter (measured slower); dpo: set true (TRL's Liger DPO loss). Not with torch_compile.",
    )
    cudnn_attention: bool | None = Field(
        None,
        description="Let PyTorch's sdpa pick cuDNN's fused attention on GPUs (it is first choice on H100s). Default: "
        "on for compiled jobs (their batches take a few shapes; masked-lm and dpo were measured with it), off for "
        "the rest: cuDNN builds a plan for each new batch shape, ~110 ms of host time each on an H100, so an eager "
        "BERT-base step of batch 64 on rows padded to their longest ran 137 ms with it against 33 ms without "
        "(flash or memory-efficient kernels instead), 29.3 against 25.4 ms once every length had been seen "
        "(bench/sdpa_backend_probe.py). true / false: the job's choice.",
    )
    drop_unpadded_masks: bool | None = Field(
        None,
        description="text-classification: a batch with no padding goes to the model without its attention mask (all "
        "ones: the same attention), which transformers would check on the device before attention, a host sync each "
        "step: an eager BERT-base step of 64 x 128 tokens ran 35.1 ms without the mask against 42.3 ms with it on an "
        "H100 (bench/cls_step_probe.py). Default: on for eager jobs; compiled jobs keep the mask (with CUDA "
        "graphs, every batch unpadded, dropping it ran 591 samples/s against 1,163 on an H100: not explained). false "
        "keeps every mask.",
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="More transformers.TrainingArguments, passed through verbatim."
    )

    @field_validator("extra_args")
    @classmethod
    def _extra_args_known(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:  # the usual case: no need to import transformers (seconds) to validate a job file
            return value
        known = training_argument_names()
        managed = [f"{k} (set {MANAGED[k]})" for k in value if k in MANAGED]
        unknown = [k for k in value if k not in known and k not in MANAGED]
        problems = []
        if managed:
            problems.append(f"hfray sets {', '.join(managed)}")
        if unknown:
            problems.append(f"not transformers.TrainingArguments fields: {', '.join(unknown)}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _eval_steps_needed(self) -> TrainingConfig:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("training.eval_strategy 'steps' needs training.eval_steps")
        if self.max_steps == 0:
            raise ValueError("training.max_steps must be -1 (use epochs) or a positive step count")
        if self.liger_kernel and (self.torch_compile or self.cuda_graphs):
            key = "torch_compile" if self.torch_compile else "cuda_graphs"
            raise ValueError(f"training.liger_kernel and training.{key}: pick one (Liger's kernels are Triton)")
        if self.cuda_graphs and self.torch_compile is None:
            # Graphs replay compiled regions: asking for them asks for the compile (else the key would do nothing).
            self.torch_compile = True
        return self
