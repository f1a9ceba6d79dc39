"""Job files: pydantic v2 models, one per section, every problem reported at once.

A job file is YAML. ``load_job(path, overrides)`` reads it, applies ``key=value`` overrides and
validates it; a failure raises :class:`~hfray.errors.ConfigError` listing each bad key with its value
and what was expected. Across Ray boundaries the job travels as a plain dict (``job.to_dict()``) and
is re-validated on arrival (``JobConfig.from_dict``), so workers never trust a pickled object.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from typing_extensions import Self

from hfray.errors import ConfigError, Problem
from hfray.lm_config import LM_TASKS, LMConfig, TokenizerTrainingConfig, lm_task_problems
from hfray.peft_config import PeftSection, peft_job_problems
from hfray.task_config import (
    FINETUNE_TASKS,
    QuestionAnsweringConfig,
    Seq2SeqConfig,
    TokenClassificationConfig,
    evaluation_defaults,
    metric_problems,
    task_problems,
)
from hfray.trl_config import TRL_TASKS, TrlSection, trl_task_problems

TASKS = ("text-classification", *LM_TASKS, *TRL_TASKS, *FINETUNE_TASKS)
# Tasks judged by loss alone (no classification metrics by default).
LOSS_ONLY_TASKS = (*LM_TASKS, *TRL_TASKS)
# Metric names hfray computes for classification (see hfray.metrics); "loss" is always reported.
CLASSIFICATION_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_micro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what crosses Ray boundaries."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "job") -> Self:
        """Validate a plain dict; every problem at once as a ConfigError naming ``source``."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(problems_from_validation(exc, raw), source) from None


class ModelConfig(Section):
    """Either pretrained weights (``name_or_path``) or a fresh model built from ``architecture``."""

    name_or_path: str | None = Field(
        None, description="Local dir, 'builtin:all-MiniLM-L6-v2', or a Hugging Face Hub id."
    )
    architecture: dict[str, Any] | None = Field(
        None, description="A transformers config dict with 'model_type'; the model is randomly initialised."
    )
    tokenizer: str | None = Field(None, description="Tokenizer source; defaults to name_or_path.")
    revision: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.architecture is None):
            raise ValueError("set exactly one of model.name_or_path (pretrained) or model.architecture")
        if self.architecture is not None:
            if "model_type" not in self.architecture:
                raise ValueError("model.architecture needs a 'model_type' key (e.g. bert, gpt2, llama)")
            if self.tokenizer is None:
                raise ValueError("model.architecture needs model.tokenizer (a tokenizer dir or hub id)")
        return self

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.name_or_path  # type: ignore[return-value]


class DataConfig(Section):
    train: str = Field(description="File, glob, directory, 'builtin:NAME' or a Hub dataset id.")
    validation: str | None = Field(None, description="If unset, a seeded split of train.")
    test: str | None = None
    format: Literal["auto", "csv", "json", "parquet", "text", "arrow"] = "auto"
    hub_config: str | None = Field(None, description="Config name of a Hub dataset.")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    labels: list[str] | None = Field(None, description="Label order; default: sorted labels of train.")
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 42
    max_length: int = Field(128, ge=8, le=32768)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)


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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU.")
    gradient_checkpointing: bool = False
    strategy: Literal["ddp", "zero2", "zero3", "zero3-offload", "fsdp"] = Field(
        "ddp",
        description="How workers share the model: ddp (replicas), zero2/zero3/zero3-offload (DeepSpeed, GPU), "
        "fsdp (PyTorch FSDP); through the HF Trainer's own integrations (hfray.scaleout).",
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
    torch_compile: bool = Field(False, description="torch.compile the model (HF Trainer's integration).")
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="More transformers.TrainingArguments, passed through verbatim."
    )

    @field_validator("extra_args")
    @classmethod
    def _extra_args_known(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:  # the usual case: no need to import transformers (seconds) to validate a job file
            return value
        from hfray.hf_args import MANAGED, training_argument_names

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
        return self


class EvaluationConfig(Section):
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "f1_macro", "precision_macro", "recall_macro"])
    metric_for_best_model: str = Field("f1_macro", description="'loss' or one of evaluation.metrics.")
    greater_is_better: bool | None = Field(None, description="Default: False for loss, True otherwise.")
    load_best_model_at_end: bool = True

    @model_validator(mode="after")
    def _metric_names(self) -> EvaluationConfig:
        # Which names are known depends on the task: JobConfig checks them (metric_problems).
        if self.metric_for_best_model != "loss" and self.metric_for_best_model not in self.metrics:
            raise ValueError(
                f"evaluation.metric_for_best_model {self.metric_for_best_model!r} must be 'loss' "
                f"or one of evaluation.metrics {self.metrics}"
            )
        return self

    @property
    def best_metric_key(self) -> str:
        """The key under which the metric reaches Ray (HF prefixes eval metrics with 'eval_')."""
        return f"eval_{self.metric_for_best_model}"

    @property
    def best_mode(self) -> Literal["max", "min"]:
        greater = self.greater_is_better
        if greater is None:
            greater = self.metric_for_best_model != "loss"
        return "max" if greater else "min"


class ResourcesConfig(Section):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each, DDP).")
    gpus_per_worker: float = Field(0, ge=0, description="0 trains on CPU (DDP over gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="Default 4 on GPU jobs (data loading, tokenizing), 1 on CPU.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    accelerator_type: str | None = None


class ClusterConfig(Section):
    address: str | None = Field(None, description="Ray address; unset: $RAY_ADDRESS, else a new local cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started by hfray.")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local cluster started by hfray.")
    check_resources: bool = Field(True, description="Refuse jobs the cluster cannot fit (off for autoscaling).")
    overlap_checks: bool = Field(
        True,
        description="On a running cluster, start the Train workers while the driver checks the job (classification); "
        "they wait for the checks, and train only if they pass.",
    )


class StorageConfig(Section):
    path: str = Field("~/hfray_runs", description="Local dir or URI (s3://...) shared by all nodes.")
    run_name: str | None = Field(None, description="Default: '<name>-<hash of the job>', stable across retries.")
    num_to_keep: int = Field(2, ge=1, description="Ray checkpoints kept (best by the chosen metric + latest).")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts before giving up (-1: forever).")
    async_upload: bool = Field(
        True,
        description="Upload checkpoints in a background thread while training goes on (Ray's ASYNC mode); "
        "a checkpoint counts once uploaded, so a crash mid-upload resumes from the one before.",
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible server for s3:// paths (MinIO, Ceph); credentials come from the env."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_fits_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        from hfray.storage import endpoint_problem

        problem = endpoint_problem(info.data.get("path", ""), value)
        if problem:
            raise ValueError(problem)
        return value


class JobConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    task: Literal[
        "text-classification",
        "masked-lm",
        "causal-lm",
        "sft",
        "dpo",
        "token-classification",
        "question-answering",
        "seq2seq",
    ] = "text-classification"
    tokenizer: TokenizerTrainingConfig | None = Field(None, description="Train model.tokenizer: 'hfray tokenizer'.")
    lm: LMConfig | None = Field(None, description="Language-model data (masked-lm, causal-lm); defaults there.")
    peft: PeftSection | None = Field(None, description="Train a PEFT adapter (LoRA, QLoRA, IA3, prefix, prompt).")
    trl: TrlSection | None = Field(None, description="TRL data and trainer settings (sft, dpo); defaults there.")
    token_classification: TokenClassificationConfig | None = Field(None, description="Columns and settings.")
    question_answering: QuestionAnsweringConfig | None = Field(None, description="Columns and settings.")
    seq2seq: Seq2SeqConfig | None = Field(None, description="Columns, prefix and generation settings.")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name_or_path="builtin:all-MiniLM-L6-v2"))
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sweep: SweepConfig | None = Field(None, description="Search space and scheduler for 'hfray sweep'.")
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig())

    def fingerprint(self) -> str:
        """Hash of what determines the result; storage and cluster placement do not count."""
        relevant = self.to_dict()
        for key in ("storage", "cluster", "tracking"):
            relevant.pop(key)
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
    def _lm_evaluation_defaults(cls, raw: Any) -> Any:
        # Classification metrics are the evaluation defaults; a language model is judged by loss alone.
        if isinstance(raw, dict) and raw.get("task") in LOSS_ONLY_TASKS:
            evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
            raw = {**raw, "evaluation": {"metrics": [], "metric_for_best_model": "loss", **evaluation}}
        return evaluation_defaults(raw)  # token-classification, question-answering, seq2seq: their metrics

    @model_validator(mode="after")
    def _task_sections(self) -> JobConfig:
        if self.task in LM_TASKS and self.lm is None:
            self.lm = LMConfig()
        if self.task in TRL_TASKS and self.trl is None:
            self.trl = TrlSection()
        problems = lm_task_problems(self) + peft_job_problems(self) + trl_task_problems(self) + task_problems(self)
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


# ----------------------------------------------------------------------------- errors


def _lookup(raw: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    node = raw
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        else:
            return False, None
    return True, node


def _section_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for 'did you mean')."""
    model: Any = JobConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        members = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not members:  # Optional[Section] counts as the section
            return []
        model = members[0]
    return list(model.model_fields)


def problems_from_validation(exc: ValidationError, raw: dict[str, Any]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        # Union members and validator names clutter the location; keep the user's keys only.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        if loc[:2] == ("sweep", "parameters") and len(loc) > 3:
            loc = loc[:3] + loc[4:]  # drop the distribution tag pydantic inserts ('uniform', ...)
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _section_keys(loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key{hint} Allowed here: {', '.join(allowed)}" if allowed else "unknown key"
            problems.append(Problem(where, msg))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            problems.append(Problem(where, "required key is missing"))
            continue
        found, value = _lookup(raw, loc)
        problems.append(Problem(where, msg, value, has_value=found and err["type"] != "value_error"))
    # One problem per location and message: union branches repeat the same complaint.
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in problems:
        if (p.location, p.message) not in seen:
            seen.add((p.location, p.message))
            unique.append(p)
    return unique


# ----------------------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    parsed = []
    bad = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            bad.append(Problem(item, "an override must look like section.key=value, e.g. training.learning_rate=3e-5"))
            continue
        try:
            parsed.append((key.split("."), yaml.safe_load(value) if value != "" else None))
        except yaml.YAMLError as exc:
            bad.append(Problem(key, f"value is not valid YAML: {exc}", value, has_value=True))
    if bad:
        raise ConfigError(bad, "overrides")
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for path, value in parse_overrides(overrides):
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), "job file not found")], "job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(where, f"not valid YAML: {reason}")], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(top level)", "a job file must be a YAML mapping of sections")], str(path))
    return raw


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return JobConfig.from_dict(raw, source=str(path))


# The sweep section lives in its own module (it builds on Section); resolve the forward reference.
from hfray.sweep_config import SweepConfig  # noqa: E402
from hfray.tracking_config import TrackingConfig  # noqa: E402

JobConfig.model_rebuild()
