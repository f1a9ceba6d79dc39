"""PEFT adapters around hfray models: the job's ``peft:`` section checked on the driver, applied on each worker.

Target modules default to PEFT's own per-architecture mapping. Writing and loading adapter artifacts is
:mod:`hfray.artifacts.adapters`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from hfray.config import JobConfig
from hfray.errors import ConfigError, ModelError, Problem

# PEFT task type and the Auto class that rebuilds the base, by the suffix of the model's class name.
_TASK_TYPES = (
    ("ForSequenceClassification", "SEQ_CLS", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "TOKEN_CLS", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "QUESTION_ANS", "AutoModelForQuestionAnswering"),
    ("ForCausalLM", "CAUSAL_LM", "AutoModelForCausalLM"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM", "AutoModelForSeq2SeqLM"),
    ("EncoderDecoderModel", "SEQ_2_SEQ_LM", "AutoModelForSeq2SeqLM"),
)


def task_type_of(model: Any) -> tuple[str, str]:
    """(PEFT task type, transformers Auto class name) for a model instance."""
    name = type(model).__name__
    for suffix, task_type, auto in _TASK_TYPES:
        if name.endswith(suffix):
            return task_type, auto
    raise ModelError(f"peft: no PEFT task type for {name}; supported: {[s for s, _, _ in _TASK_TYPES]}")


def default_target_modules(method: str, model_type: str) -> list[str] | None:
    """PEFT's per-architecture default for LoRA/QLoRA/IA3 (None: PEFT has none for this model type)."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    )

    mapping = (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
        if method == "ia3"
        else (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    )
    found = mapping.get(model_type)
    return list(found) if found else None


def check_peft(job: JobConfig, model_type: str) -> None:
    """Before Ray starts: the target modules resolve for this architecture; QLoRA's library is here."""
    cfg = job.peft
    if cfg is None:
        return
    problems = []
    no_default = cfg.target_modules is None and default_target_modules(cfg.method, model_type) is None
    if cfg.method in ("lora", "qlora", "ia3") and no_default:
        problems.append(
            Problem(
                "peft.target_modules",
                f"PEFT has no default target modules for model type {model_type!r}: list them "
                "(module name suffixes such as q_proj, v_proj) or use 'all-linear'",
            )
        )
    if cfg.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            Problem("peft.method", "'qlora' needs the bitsandbytes package (pip install bitsandbytes) and CUDA GPUs")
        )
    if problems:
        raise ConfigError(problems, "job")


def peft_config_object(cfg: Any, task_type: str, model_type: str, tokenizer_source: str | None) -> Any:
    """The ``peft.PeftConfig`` of a job's ``peft`` section."""
    import peft

    targets = cfg.target_modules or default_target_modules(cfg.method, model_type)
    common = {"task_type": task_type, "modules_to_save": cfg.modules_to_save}
    if cfg.method in ("lora", "qlora"):
        return peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias=cfg.bias, target_modules=targets, **common
        )
    if cfg.method == "ia3":
        ff = cfg.feedforward_modules
        if ff is None and cfg.target_modules is None:
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

            ff = FF.get(model_type)
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff or [], **common)
    if cfg.method == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, **common)
    if cfg.prompt_init_text:
        return peft.PromptTuningConfig(
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=cfg.prompt_init_text,
            tokenizer_name_or_path=tokenizer_source,
            **common,
        )
    return peft.PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, **common)


def quantized_load_kwargs(job: JobConfig) -> dict[str, Any]:
    """``from_pretrained`` kwargs of a QLoRA base on this worker's GPU; empty for other methods."""
    if job.peft is None or job.peft.method != "qlora":
        return {}
    import torch
    from ray.train.torch import get_device
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise ModelError("peft.method: 'qlora' needs CUDA on every worker (bitsandbytes quantizes on the GPU)")
    if job.peft.quantization_bits == 4:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": quant, "device_map": {"": get_device()}}


def apply_peft(model: Any, job: JobConfig, base_copy_dir: str | None = None) -> tuple[Any, dict[str, Any] | None]:
    """Wrap ``model`` in the job's adapter (unchanged without a ``peft`` section); prints the trainable count.

    ``base_copy_dir`` (rank 0 only): where to save the untouched base of a model built from
    ``model.architecture``, whose random weights the adapter artifact must carry.
    """
    if job.peft is None:
        return model, None
    from peft import get_peft_model, prepare_model_for_kbit_training

    if base_copy_dir and job.model.architecture is not None:
        model.save_pretrained(base_copy_dir)
    task_type, auto_class = task_type_of(model)
    config = peft_config_object(job.peft, task_type, model.config.model_type, job.model.tokenizer_source)
    if job.peft.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job.training.gradient_checkpointing)
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    info = {
        "method": job.peft.method,
        "task_type": task_type,
        "auto_class": auto_class,
        "target_modules": sorted(getattr(model.peft_config["default"], "target_modules", None) or []),
        "trainable_params": int(trainable),
        "all_params": int(total),
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
    }
    print(
        f"[hfray] peft {job.peft.method}: {trainable:,} trainable of {total:,} parameters "
        f"({info['trainable_percent']:.3f}%), targets {info['target_modules'] or '(virtual tokens)'}",
        flush=True,
    )
    return model, info
