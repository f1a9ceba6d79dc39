"""What several bench scripts share (a sibling module, not a package: each script puts ``bench/`` on ``sys.path``).

- :data:`SMOLLM2_135M_SHAPE`: SmolLM2-135M's architecture (``bench/throughput_bench.py``, ``bench/peft_gpu.py``);
- :func:`adamw_step`: the bare PyTorch training step the runners are compared with (``bench/throughput_bare.py``,
  ``bench/step_profile.py``);
- :func:`trl_model_and_tokenizer`, :func:`trl_arguments`: what the TRL baselines (``SFTTrainer``, ``DPOTrainer``) of
  ``bench/throughput_plain.py`` / ``bench/throughput_dpo.py`` share;
- :func:`in_fresh_process`: one case of a CPU probe in a new process with a cold compile cache
  (``bench/compile_traces_cpu.py``, ``bench/compile_encoder_cpu.py``, ``bench/gc_pause_cpu.py``).

Not a test: pytest does not collect it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

SMOLLM2_135M_SHAPE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


def adamw_step(forward: Any, opt: Any, device: str, autocast: bool) -> Callable[[dict[str, Any]], Any]:
    """One training step: ``forward(**inputs).loss`` (bf16 autocast when ``autocast``), backward, ``opt`` step, grads
    set to None. Returns the loss."""
    import torch

    def step(inputs: dict[str, Any]) -> Any:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = forward(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def trl_model_and_tokenizer(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(model from the spec's architecture, the spec's tokenizer with a pad token), as a TRL user builds them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    arch = dict(spec["architecture"])
    arch.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    return AutoModelForCausalLM.from_config(config), tokenizer


def trl_arguments(spec: dict[str, Any], gpu: bool, out_dir: str) -> dict[str, Any]:
    """The TRL config keys both baselines set (TRL's defaults otherwise: its gradient checkpointing stays on)."""
    return {
        "output_dir": out_dir,
        "max_steps": spec["steps"],
        "per_device_train_batch_size": spec["batch"],
        "learning_rate": spec.get("learning_rate", 1e-4),
        "bf16": gpu,
        "fp16": False,
        "use_cpu": not gpu,
        "max_length": spec["seq"],
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 50,
        "report_to": "none",
        "disable_tqdm": True,
    }


def in_fresh_process(script: str, *args: str) -> str:
    """``python script *args`` in a new process (a fresh heap, an Inductor cache of its own: a cold compile); its last
    line of output. A failed case raises with its error output's tail."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]
