"""PEFT adapters on hfray models: built on each worker, exported as PEFT folders, loaded for predict/serve.

An adapter artifact is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, with
the trained task head as ``modules_to_save``) plus the tokenizer, ``hfray_manifest.json`` and::

    base/      the base model's config (labels included); for a model built from ``model.architecture``
               also its randomly initialised weights, which exist nowhere else
    merged/    (``peft.merge: true``) the adapter merged into a full-precision copy of the base: a plain
               ``save_pretrained`` model with its own manifest, servable without PEFT

:func:`load_model` turns either kind of artifact (plain or adapter) into a model; hfray predict and
hfray serve go through it. Target modules default to PEFT's own per-architecture mapping.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from typing import Any

from hfray.errors import ConfigError, ModelError, Problem

BASE_DIR = "base"
MERGED_DIR = "merged"
ADAPTER_CONFIG = "adapter_config.json"
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


def check_peft_driver(job: Any, model_type: str) -> None:
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


def quantized_load_kwargs(job: Any) -> dict[str, Any]:
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


def apply_peft_per_worker(model: Any, job: Any, base_copy_dir: str | None = None) -> tuple[Any, dict[str, Any] | None]:
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


# ----------------------------------------------------------------------------- export (rank 0)


def write_adapter_extras(model: Any, stage: str, job: Any, info: dict[str, Any], base_copy_dir: str | None) -> None:
    """``base/`` next to a saved adapter: the base config (labels), plus its weights when built from a config."""
    base = os.path.join(stage, BASE_DIR)
    if base_copy_dir and os.path.isdir(base_copy_dir):
        shutil.copytree(base_copy_dir, base, dirs_exist_ok=True)
        info["base_model"] = BASE_DIR
    else:
        config = model.get_base_model().config
        config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
        config.save_pretrained(base)
        info["base_model"] = job.model.name_or_path


def write_merged(stage: str, tokenizer: Any, manifest: dict[str, Any]) -> str:
    """``merged/``: the saved adapter merged into a full-precision base, with its own manifest."""
    from hfray.checkpoints import write_manifest

    merged = load_model(stage, manifest, merge=True)
    dest = os.path.join(stage, MERGED_DIR)
    merged.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    peft_info = {**manifest["peft"], "merged_from_adapter": True}
    write_manifest(dest, {**manifest, "peft": peft_info})
    print(f"[hfray] merged model written to {dest}", flush=True)
    return dest


# ----------------------------------------------------------------------------- loading


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def _base_source(path: str, peft_info: dict[str, Any]) -> str:
    from hfray.assets import resolve_model

    source = peft_info.get("base_model") or BASE_DIR
    if source == BASE_DIR:
        return os.path.join(path, BASE_DIR)
    return resolve_model(source)


def load_model(path: str, manifest: dict[str, Any] | None = None, merge: bool = False, **kwargs: Any) -> Any:
    """The model of an artifact folder: plain ``from_pretrained``, or base + adapter for a PEFT artifact.

    ``merge``: fold LoRA/IA3 weights into the base (faster inference; prefix/prompt adapters stay as they are).
    """
    import transformers
    from peft import PeftModel

    if manifest is None:
        with open(os.path.join(path, "hfray_manifest.json")) as f:
            manifest = json.load(f)
    peft_info = manifest.get("peft") or {}
    auto = getattr(transformers, peft_info.get("auto_class") or _auto_class_for_task(manifest.get("task", "")))
    if not is_adapter(path):
        return auto.from_pretrained(path, **kwargs)
    config = transformers.AutoConfig.from_pretrained(os.path.join(path, BASE_DIR))
    base = auto.from_pretrained(_base_source(path, peft_info), config=config, **kwargs)
    model = PeftModel.from_pretrained(base, path)
    if merge and peft_info.get("method") in ("lora", "qlora", "ia3"):
        return model.merge_and_unload()
    return model


def _auto_class_for_task(task: str) -> str:
    return {
        "text-classification": "AutoModelForSequenceClassification",
        "text-generation": "AutoModelForCausalLM",
        "fill-mask": "AutoModelForMaskedLM",
        "token-classification": "AutoModelForTokenClassification",
        "question-answering": "AutoModelForQuestionAnswering",
    }.get(task, "AutoModelForSeq2SeqLM")
