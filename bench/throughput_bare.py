"""The ceiling of ``bench/throughput_bench.py``: the bare training step of the same model, no Trainer, no Ray.

The model from its config (random weights), random tokens already on the device, fused AdamW (GPU), bf16
autocast (GPU), ``torch.compile`` (GPU; ``--eager`` or CPU: eager), a loop of ``forward, backward, step,
zero_grad``. What hfray's step can reach on the device: ``hfray / bare`` in the bench's table is the share of it
that hfray keeps. Masked-LM runs its head on masked positions only (exactly 15% of each block: static shapes
for the compiled graph), as hfray does; LoRA SFT trains a LoRA adapter (r 16, all linear layers) on a
causal LM; LoRA DPO runs ``bench/throughput_dpo.py``'s step (reference and policy log-probs, sigmoid loss).
Timed with the same ``ThroughputCallback`` as the other runners (its hooks called by hand), so the warm-up rule,
MFU formula and peak memory are the same. One process, one device:

    python bench/throughput_bare.py --spec SPEC.json --out RESULT.json [--eager | --graphs] [--torch-profile DIR]
                                    [--trl-head]  # dpo: TRL's chunked fused head instead of logits + cross-entropy

``--graphs``: the compiled step replays CUDA graphs (``reduce-overhead``): a compiled step without them can be
launch-bound itself (BERT-base classification 64 x 128 on one H100: 17.0-25.2 ms a step between two runs of one
machine, ``bench/results/gpu_dec06_s7_h100.md``), so this is the steadier ceiling for small steps.

``--torch-profile DIR``: steps 12-16 recorded with ``torch.profiler`` (``hfray.train.callbacks.torch_profile``: the
same summary hfray's ``HFRAY_TORCH_PROFILE`` writes, so the two steps compare kernel by kernel).

SPEC (written by the bench): workload (mlm|mbert|clm|llama|cls|sft|dpo), architecture, steps, batch, seq; optional
tokenizer (the vocabulary size when the architecture has none), learning_rate (1e-4, as the other runners).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))
import throughput_dpo  # noqa: E402
from bench_common import adamw_step  # noqa: E402  (sibling modules, not a package)

STARTED = time.time()
MASK_P = 0.15
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def build_model(spec: dict[str, Any]) -> tuple[Any, float]:
    """(model, head fraction for the FLOP count), as hfray builds the workload's model."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    from hfray.model.language_model import mlm_loss_on_masked_only

    arch = dict(spec["architecture"])
    if "vocab_size" not in arch:  # the smoke's tiny models: the synthetic tokenizer's size, as hfray does
        from transformers import AutoTokenizer

        arch["vocab_size"] = len(AutoTokenizer.from_pretrained(spec["tokenizer"]))
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    workload = spec["workload"]
    if workload in ("mlm", "mbert"):
        model = AutoModelForMaskedLM.from_config(config)
        return model, (MASK_P if mlm_loss_on_masked_only(model) else 1.0)
    if workload == "cls":
        config.num_labels = 2
        return AutoModelForSequenceClassification.from_config(config), 1.0
    model = AutoModelForCausalLM.from_config(config)
    if workload in ("sft", "dpo"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    return model, 1.0


def make_batches(spec: dict[str, Any], vocab: int, device: str, n: int = 4) -> list[dict[str, Any]]:
    """``n`` random batches on the device: full blocks, a fixed masked count per MLM block."""
    import torch

    gen = torch.Generator().manual_seed(0)
    rows, seq, workload = spec["batch"], spec["seq"], spec["workload"]
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (rows, seq), generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if workload in ("mlm", "mbert"):
            labels = torch.full_like(ids, -100)
            per_row = max(1, round(seq * MASK_P))
            for r in range(rows):
                pos = torch.randperm(seq, generator=gen)[:per_row]
                labels[r, pos] = ids[r, pos]
            batch["labels"] = labels
        elif workload == "cls":
            batch["labels"] = torch.randint(0, 2, (rows,), generator=gen)
        else:
            batch["labels"] = ids.clone()
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def make_step(model: Any, device: str, compiled: bool, lr: float = 1e-4, graphs: bool = False) -> Any:
    """``graphs``: compiled with CUDA graphs (mode reduce-overhead; the optimizer step stays outside them)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=device == "cuda")
    if compiled:  # the MLM head on masked positions has a data-dependent shape: compile the encoder only
        target = model.base_model if model.config.model_type == "bert" and hasattr(model, "cls") else model
        target.compile(mode="reduce-overhead" if graphs else None)
    return adamw_step(model, opt, device, autocast=device == "cuda")


def run(spec: dict[str, Any], compiled: bool, profile_dir: str | None = None, graphs: bool = False) -> dict[str, Any]:
    """``graphs``: the compiled step replays CUDA graphs (not for dpo), a ceiling that is not launch-bound."""
    import torch

    from hfray.train.callbacks.throughput import ThroughputCallback, flops_per_token

    device = "cuda" if torch.cuda.is_available() else "cpu"
    graphs = graphs and compiled and device == "cuda" and spec["workload"] != "dpo"
    torch.manual_seed(0)
    model, head_fraction = build_model(spec)
    model.to(device).train()
    base = model.get_base_model() if spec["workload"] in ("sft", "dpo") else model
    if spec["workload"] == "dpo":  # its own step, batches of pairs and counts (bench/throughput_dpo.py)
        step, speed, batches = throughput_dpo.run_bare(spec, model, device, compiled and device == "cuda")
    else:
        speed = ThroughputCallback(spec["seq"], flops_per_token(base, spec["seq"], head_fraction))
        batches = make_batches(spec, model.config.vocab_size, device)
        step = make_step(model, device, compiled and device == "cuda", spec.get("learning_rate", 1e-4), graphs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    args = SimpleNamespace(world_size=1, per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1)
    state = SimpleNamespace(max_steps=spec["steps"], is_world_process_zero=True)
    speed.on_train_begin(args, state, None, model=model)
    losses = []
    window = None
    if profile_dir and spec["steps"] > 17:
        from hfray.train.callbacks.torch_profile import Window

        window = Window(Path(profile_dir), steps=5)
    for i in range(spec["steps"]):
        if window is not None and i == 12:  # from step 12 to 16, as hfray's callback records
            window.start()
        if window is not None and i == 17:
            window.stop()
        speed.on_step_begin(args, state, None)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the graphs' outputs of the last may be reused
        loss = step(batches[i % len(batches)])
        if i % 10 == 0 or i == spec["steps"] - 1:
            losses.append(loss.detach().clone())  # read at the end (no host sync); a graph's output is overwritten
        if i == spec["steps"] - 1:
            sync()  # the steady intervals are back to back: their sum is the GPU's time for those steps
        speed.on_step_end(args, state, None)
    speed.on_train_end(args, state, None)
    if window is not None:
        window.write()
    return {
        **speed.summary,
        "compiled": compiled and device == "cuda",
        "cuda_graphs": graphs,
        "losses_every_10": [round(float(x), 4) for x in losses],
        "parameters": sum(p.numel() for p in base.parameters()),
        "process_started_at": STARTED,
        "process_ended_at": time.time(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--eager", action="store_true", help="no torch.compile (on CPU it is always eager)")
    parser.add_argument("--torch-profile", default=None, help="folder for a torch.profiler record of steps 12-16")
    parser.add_argument("--graphs", action="store_true", help="compiled with CUDA graphs (GPU; not dpo)")
    parser.add_argument("--trl-head", action="store_true", help="dpo: log-probs through TRL's chunked fused head")
    cli = parser.parse_args()
    with open(cli.spec) as f:
        spec = json.load(f)
    spec["trl_head"] = cli.trl_head
    result = run(spec, compiled=not cli.eager, profile_dir=cli.torch_profile, graphs=cli.graphs)
    with open(cli.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
