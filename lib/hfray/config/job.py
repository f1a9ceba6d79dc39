"""``JobConfig``: a whole job file, its sections, and the rules that tie a task to its sections (at the end).

A job file is YAML (:mod:`hfray.config.loading` reads it). Across Ray boundaries the job travels as a plain
dict (``job.to_dict()``) and is re-validated on arrival (``JobConfig.from_dict``), so workers never trust a
pickled object.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from hfray.config.data import DataConfig
from hfray.config.evaluation import CLASSIFICATION_METRICS, EvaluationConfig
from hfray.config.lm import LM_TASKS, REQUIRED_ROLES, LMConfig, TokenizerTrainingConfig
from hfray.config.model import ModelConfig
from hfray.config.peft import PRETRAINING_TASKS, PeftSection
from hfray.config.resources import ClusterConfig, ResourcesConfig
from hfray.config.section import Section
from hfray.config.storage import StorageConfig
from hfray.config.sweep import SweepConfig, fill_default_ranges
from hfray.config.tasks import (
    FINETUNE_TASKS,
    SECTION_OF,
    TASK_METRICS,
    ImageClassificationConfig,
    QuestionAnsweringConfig,
    Seq2SeqConfig,
    TokenClassificationConfig,
    evaluation_defaults,
)
from hfray.config.tracking import TrackingConfig
from hfray.config.training import TrainingConfig
from hfray.config.trl import GRPO_KEYS, GRPO_METRICS, TRL_TASKS, TrlSection, hashed_trl
from hfray.errors import ConfigError, Problem

# Every task a job can name; hfray.train.recipes.RECIPES maps each to the recipe that trains it.
TASKS = ("text-classification", *LM_TASKS, *TRL_TASKS, *FINETUNE_TASKS)
# Tasks judged by loss alone (no classification metrics by default).
LOSS_ONLY_TASKS = (*LM_TASKS, "sft", "dpo")


# Keys that change how fast a run goes, never its numbers: left out of the run's fingerprint.
_SPEED_ONLY = (
    ("lm", "prefetch_batches"),
    ("lm", "materialize"),
    ("resources", "launch"),
    ("model", "attn_implementation"),  # the same attention, another kernel
    ("trl", "packed_layout"),  # the same packed documents, as rows or one flattened row
    ("training", "compile_regions"),  # the same compiled model, traced layer by layer or whole
    ("training", "drop_unpadded_masks"),  # an all-ones mask or none: the same attention
    ("trl", "deferred_metrics"),  # the same metrics, read from the device per log instead of per step
    ("training", "cuda_graphs"),  # the same compiled kernels, launched as one CUDA graph per region
    ("training", "cudnn_attention"),  # the same attention, cuDNN's kernel or another
)

# Keys whose default became "unset" (None: hfray decides per run) hash as their old default: run names stay.
_OLD_DEFAULTS = (("training", "torch_compile", False),)  # False until 2026-12-05


class JobConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    task: Literal[
        "text-classification",
        "masked-lm",
        "causal-lm",
        "sft",
        "dpo",
        "grpo",
        "token-classification",
        "question-answering",
        "seq2seq",
        "image-classification",
    ] = "text-classification"
    tokenizer: TokenizerTrainingConfig | None = Field(None, description="Train model.tokenizer: 'hfray tokenizer'.")
    lm: LMConfig | None = Field(None, description="Language-model data (masked-lm, causal-lm); defaults there.")
    peft: PeftSection | None = Field(None, description="Train a PEFT adapter (LoRA, QLoRA, IA3, prefix, prompt).")
    trl: TrlSection | None = Field(None, description="TRL data and trainer settings (sft, dpo, grpo).")
    token_classification: TokenClassificationConfig | None = Field(None, description="Columns and settings.")
    question_answering: QuestionAnsweringConfig | None = Field(None, description="Columns and settings.")
    seq2seq: Seq2SeqConfig | None = Field(None, description="Columns, prefix and generation settings.")
    image_classification: ImageClassificationConfig | None = Field(None, description="Image column, augmentation.")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name_or_path="builtin:all-MiniLM-L6-v2"))
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sweep: SweepConfig | None = Field(None, description="Search space and scheduler for 'hfray sweep'.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def fingerprint(self) -> str:
        """Hash of what determines the result; storage and cluster placement do not count."""
        relevant = self.to_dict()
        for key in ("storage", "cluster", "tracking"):
            relevant.pop(key)
        if relevant["trl"] is not None:
            relevant["trl"] = hashed_trl(relevant["trl"])
        for section, key, old in _OLD_DEFAULTS:
            if relevant.get(section) is not None and relevant[section].get(key) is None:
                relevant[section][key] = old
        for section, key in _SPEED_ONLY:  # how fast, not what is computed: a new knob keeps every run name
            if relevant.get(section) is not None:
                relevant[section].pop(key, None)
        # A section left unset does not count: a new optional section (a new task's) keeps every run name.
        relevant = {key: value for key, value in relevant.items() if value is not None}
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    @property
    def run_name(self) -> str:
        return self.storage.run_name or f"{self.name}-{self.fingerprint()}"

    @model_validator(mode="before")
    @classmethod
    def _gpu_defaults(cls, raw: Any) -> Any:
        """Defaults that pay off on GPUs, applied only where the job file leaves the key unset.

        Ray reserves one CPU per worker unless told otherwise, which starves a GPU worker's data loading.
        Two DataLoader workers pad classification batches off the training thread: without them hfray's BERT-base
        classification fell from 1.14x to 0.86x the plain Trainer on an H200 (bench/results/throughput_gpu_dec01.md).
        """
        if not isinstance(raw, dict) or not isinstance(raw.get("resources"), dict):
            return raw
        resources = raw["resources"]
        if not _positive(resources.get("gpus_per_worker")):
            return raw
        training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
        defaults: dict[str, Any] = {"dataloader_num_workers": 2}
        if raw.get("task", "text-classification") == "text-classification":
            defaults["group_by_length"] = True
        return {
            **raw,
            "resources": {"cpus_per_worker": 4, **resources},
            "training": {**defaults, **training},
        }

    @model_validator(mode="before")
    @classmethod
    def _sweep_default_ranges(cls, raw: Any) -> Any:
        return fill_default_ranges(raw)  # the learning rate's range depends on the model section

    @model_validator(mode="before")
    @classmethod
    def _lm_evaluation_defaults(cls, raw: Any) -> Any:
        # Classification metrics are the evaluation defaults; a language model is judged by loss alone.
        if isinstance(raw, dict) and raw.get("task") in LOSS_ONLY_TASKS:
            evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
            raw = {**raw, "evaluation": {"metrics": [], "metric_for_best_model": "loss", **evaluation}}
        if isinstance(raw, dict) and raw.get("task") == "grpo":  # judged by the mean reward of sampled completions
            evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
            raw = {**raw, "evaluation": {"metrics": ["reward"], "metric_for_best_model": "reward", **evaluation}}
        return evaluation_defaults(raw)  # token-classification, question-answering, seq2seq: their metrics

    @model_validator(mode="after")
    def _task_sections(self) -> JobConfig:
        if self.task in LM_TASKS and self.lm is None:
            self.lm = LMConfig()
        if self.task in TRL_TASKS and self.trl is None:
            self.trl = TrlSection()
        problems = lm_task_problems(self) + peft_job_problems(self) + trl_task_problems(self) + task_problems(self)
        if self.resources.launch == "task" and self.resources.num_workers != 1:
            problems.append(
                ("resources.launch", f"'task' runs one worker; resources.num_workers is {self.resources.num_workers}")
            )
        if self.task == "text-classification":
            problems += metric_problems(self.task, self.evaluation.metrics, CLASSIFICATION_METRICS)
        if problems:
            # A ConfigError (not a ValueError) passes through pydantic untouched: one Problem per key.
            raise ConfigError([Problem(key, message) for key, message in problems], "job")
        return self


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False  # the field's own validation reports it


# ----------------------------------------------------------------------------- rules tying a task to its sections


def lm_task_problems(raw: JobConfig) -> list[tuple[str, str]]:
    """(key, message) for each rule a job breaks that ties its task to the LM sections."""
    problems: list[tuple[str, str]] = []
    task, t, ev = raw.task, raw.training, raw.evaluation
    if task not in LM_TASKS:
        if raw.lm is not None:
            problems.append(("lm", f"only for tasks {list(LM_TASKS)}; this job's task is {task!r}"))
        return problems + _tokenizer_problems(raw)
    if ev.metrics:
        problems.append(("evaluation.metrics", f"{task} jobs report loss and perplexity only; set [] or leave unset"))
    if ev.metric_for_best_model != "loss":
        problems.append(("evaluation.metric_for_best_model", f"must be 'loss' for {task} (perplexity follows it)"))
    if t.class_weights != "none":
        problems.append(("training.class_weights", f"only for text-classification, not {task}"))
    if raw.data.text_pair_column:
        problems.append(("data.text_pair_column", f"not used by {task}; remove it"))
    if raw.lm.pipeline == "ray-data":
        # A Ray Data stream has no length: HF cannot count epochs, so the run is measured in steps.
        if t.max_steps <= 0:
            problems.append(("training.max_steps", "lm.pipeline 'ray-data' streams data: set a positive step count"))
        if t.eval_strategy != "steps":
            problems.append(("training.eval_strategy", "lm.pipeline 'ray-data' has no epochs: use 'steps'"))
    return problems + _tokenizer_problems(raw)


def _tokenizer_problems(raw: JobConfig) -> list[tuple[str, str]]:
    if raw.tokenizer is None:
        return []
    problems = []
    target = raw.model.tokenizer
    if target is None or target.startswith("builtin:") or not target.startswith(("/", "./", "../", "~")):
        problems.append(
            ("model.tokenizer", "the tokenizer section saves its tokenizer here: give a local path (/, ./, ../ or ~)")
        )
    roles = raw.tokenizer.roles(raw.task)
    needed = REQUIRED_ROLES.get(raw.task, ())
    missing = [r for r in needed if r not in roles]
    if missing:
        problems.append(("tokenizer.special_tokens", f"{raw.task} needs tokens for roles {missing}"))
    return problems


def peft_job_problems(job: JobConfig) -> list[tuple[str, str]]:
    """(key, message) for each rule the job's ``peft`` section breaks against the rest of the job."""
    cfg: PeftSection | None = job.peft
    if cfg is None:
        return []
    problems = []
    if job.task in PRETRAINING_TASKS:
        problems.append(
            ("peft", f"task {job.task!r} pre-trains every weight from scratch; use task 'sft' to fine-tune a causal LM")
        )
    if cfg.method == "qlora":
        if job.resources.gpus_per_worker <= 0:
            problems.append(
                (
                    "peft.method",
                    "'qlora' quantizes the base model with bitsandbytes, which needs CUDA GPUs: set "
                    "resources.gpus_per_worker > 0 (and install bitsandbytes), or use method 'lora' on CPU",
                )
            )
        if job.model.architecture is not None:
            problems.append(("peft.method", "'qlora' quantizes pretrained weights: set model.name_or_path"))
        strategy = getattr(job.training, "strategy", "ddp")
        if strategy != "ddp":
            problems.append(("peft.method", f"'qlora' runs under ddp only, not training.strategy {strategy!r}"))
    return problems


def trl_task_problems(job: JobConfig) -> list[tuple[str, str]]:
    """(key, message) for each rule a job breaks that ties its task to the ``trl`` section."""
    if job.task not in TRL_TASKS:
        return [("trl", f"only for tasks {list(TRL_TASKS)}; this job's task is {job.task!r}")] if job.trl else []
    t, ev = job.training, job.evaluation
    problems = grpo_problems(job) if job.task == "grpo" else []
    if job.task != "grpo" and ev.metrics:
        problems.append(("evaluation.metrics", f"{job.task} jobs report losses only; set [] or leave unset"))
    if job.task != "grpo" and ev.metric_for_best_model != "loss":
        problems.append(("evaluation.metric_for_best_model", f"must be 'loss' for {job.task}"))
    if t.class_weights != "none":
        problems.append(("training.class_weights", f"only for text-classification, not {job.task}"))
    if job.data.text_pair_column:
        problems.append(("data.text_pair_column", f"not used by {job.task}; remove it"))
    if job.task != "sft" and job.trl.packing:
        problems.append(("trl.packing", f"{job.task} scores whole answers; packing is sft only"))
    if job.task == "dpo" and job.trl.beta <= 0:
        problems.append(("trl.beta", "dpo needs a positive beta"))
    if job.task != "grpo":
        changed = [k for k, v in hashed_trl(job.trl.to_dict()).items() if k in GRPO_KEYS]
        problems += [(f"trl.{k}", f"grpo only; this job's task is {job.task!r}") for k in changed]
    return problems


def grpo_problems(job: JobConfig) -> list[tuple[str, str]]:
    """(key, message) for each rule a grpo job breaks: rewards, evaluation, whole groups of completions."""
    assert job.trl is not None
    trl, t, ev, workers = job.trl, job.training, job.evaluation, job.resources.num_workers
    problems = metric_problems("grpo", ev.metrics, GRPO_METRICS)
    if not trl.rewards:
        problems.append(("trl.rewards", "grpo needs at least one reward (kinds: see hfray.config.rewards)"))
    if not any(r.weight for r in trl.rewards):
        problems.append(("trl.rewards", "every reward has weight 0: nothing to learn from"))
    n = trl.num_generations
    if (t.per_device_train_batch_size * workers * t.gradient_accumulation_steps) % n:
        problems.append(
            (
                "training.per_device_train_batch_size",
                f"per_device_train_batch_size x num_workers x gradient_accumulation_steps (completions per "
                f"optimizer step) must be a multiple of trl.num_generations ({n})",
            )
        )
    if (t.per_device_eval_batch_size * workers) % n:
        problems.append(
            ("training.per_device_eval_batch_size", f"x num_workers must be a multiple of trl.num_generations ({n})")
        )
    return problems


def metric_problems(task: str, metrics: list[str], allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        return [("evaluation.metrics", f"unknown {unknown}; {task} jobs report any of {list(allowed)}")]
    return []


def task_problems(raw: JobConfig) -> list[tuple[str, str]]:
    """(key, message) for each rule that ties a fine-tuning task to its section; fills a missing section."""
    problems: list[tuple[str, str]] = []
    for task, key in SECTION_OF.items():
        if getattr(raw, key) is not None and raw.task != task:
            problems.append((key, f"only for task {task!r}; this job's task is {raw.task!r}"))
    if raw.model.architecture is not None and raw.model.tokenizer is None and raw.task != "image-classification":
        problems.append(("model.tokenizer", "model.architecture needs model.tokenizer (a tokenizer dir or hub id)"))
    if raw.training.drop_unpadded_masks is not None and raw.task != "text-classification":
        problems.append(("training.drop_unpadded_masks", f"only for text-classification, not {raw.task}"))
    if raw.task not in FINETUNE_TASKS:
        return problems
    key = SECTION_OF[raw.task]
    if getattr(raw, key) is None:
        section = {
            "token_classification": TokenClassificationConfig,
            "question_answering": QuestionAnsweringConfig,
            "image_classification": ImageClassificationConfig,
        }
        setattr(raw, key, section.get(key, Seq2SeqConfig)())
    problems += metric_problems(raw.task, raw.evaluation.metrics, TASK_METRICS[raw.task])
    if raw.training.class_weights != "none":
        problems.append(("training.class_weights", f"only for text-classification, not {raw.task}"))
    if raw.data.text_pair_column:
        problems.append(("data.text_pair_column", f"not used by {raw.task}: its columns are set in {key}"))
    return problems
