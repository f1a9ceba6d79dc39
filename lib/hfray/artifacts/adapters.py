"""PEFT adapter artifacts: written next to the adapter at export, loaded again for predict and serve.

An adapter artifact is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, with
the trained task head as ``modules_to_save``) plus the tokenizer, ``hfray_manifest.json`` and::

    base/      the base model's config (labels included); for a model built from ``model.architecture``
               also its randomly initialised weights, which exist nowhere else
    merged/    (``peft.merge: true``) the adapter merged into a full-precision copy of the base: a plain
               ``save_pretrained`` model with its own manifest, servable without PEFT

:func:`load_model` turns either kind of artifact (plain or adapter) into a model; hfray predict and
hfray serve go through it. Building the adapter for training is :mod:`hfray.model.peft`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from hfray.artifacts.manifest import MANIFEST, write_manifest
from hfray.config import JobConfig
from hfray.model.builtin import resolve_model

BASE_DIR = "base"
MERGED_DIR = "merged"
ADAPTER_CONFIG = "adapter_config.json"


# ----------------------------------------------------------------------------- export (rank 0 of the workers)


def write_adapter_extras(
    model: Any, stage: str, job: JobConfig, info: dict[str, Any], base_copy_dir: str | None
) -> None:
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


def base_source(path: str, peft_info: dict[str, Any]) -> str:
    """Where an adapter artifact's base model lives: its ``base/`` folder, or the model it was trained from."""
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
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    peft_info = manifest.get("peft") or {}
    auto = getattr(transformers, peft_info.get("auto_class") or _auto_class_for_task(manifest.get("task", "")))
    if not is_adapter(path):
        return auto.from_pretrained(path, **kwargs)
    model = PeftModel.from_pretrained(load_base(path, manifest, **kwargs), path)
    if merge and peft_info.get("method") in ("lora", "qlora", "ia3"):
        return model.merge_and_unload()
    return model


def load_base(path: str, manifest: dict[str, Any], **kwargs: Any) -> Any:
    """The bare base model of an adapter artifact (its config from ``base/``, labels included)."""
    import transformers

    peft_info = manifest.get("peft") or {}
    auto = getattr(transformers, peft_info.get("auto_class") or _auto_class_for_task(manifest.get("task", "")))
    config = transformers.AutoConfig.from_pretrained(os.path.join(path, BASE_DIR))
    return auto.from_pretrained(base_source(path, peft_info), config=config, **kwargs)


def _auto_class_for_task(task: str) -> str:
    return {
        "text-classification": "AutoModelForSequenceClassification",
        "text-generation": "AutoModelForCausalLM",
        "fill-mask": "AutoModelForMaskedLM",
        "token-classification": "AutoModelForTokenClassification",
        "question-answering": "AutoModelForQuestionAnswering",
    }.get(task, "AutoModelForSeq2SeqLM")
