"""Cold ``training.torch_compile`` of hfray's packed LoRA SFT step on CPU: the whole model as one graph against
``training.compile_regions`` (accelerate's regional compilation: each decoder layer compiled once), by depth.

The trainer is the one hfray's SFT workers build (``hfray.train.recipes.trl.worker``), in a fresh process per case
(Inductor's caches in a fresh directory: a cold compile), no Ray: a Llama built from a config (hidden 128, GQA 4/2),
the byte-level BPE tokenizer and corpus of ``bench/sft_layout_cpu.py``, packed rows of 256 tokens, batch 4, 8 steps.
Prints per case: the first step's seconds (the compile), every step's seconds, the losses, Dynamo's graph count.

    OMP_NUM_THREADS=1 python bench/compile_regions_cpu.py --layers 4,8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def case(regions: bool, layers: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import sft_layout_cpu as corpus_tools
    import torch._dynamo.utils
    from transformers import set_seed

    from hfray.config import JobConfig
    from hfray.model import peft
    from hfray.train.process import compile_settings
    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, trl_arguments

    work = Path(tempfile.mkdtemp())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # cold
    corpus_tools.tokenizer(work / "tok", corpus_tools.corpus(work / "train.jsonl", 200))
    corpus_tools.corpus(work / "val.jsonl", 8)
    arch = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": layers}
    arch |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
    training = {"max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1}
    training |= {"eval_strategy": "steps", "eval_steps": 100, "torch_compile": True, "compile_regions": regions}
    job = JobConfig.from_dict(
        {
            "name": "compile-regions",
            "task": "sft",
            "model": {"architecture": arch, "tokenizer": str(work / "tok")},
            "data": {"train": str(work / "train.jsonl"), "validation": str(work / "val.jsonl"), "max_length": 256},
            "trl": {"format": "text", "packing": True},
            "peft": {"method": "lora"},
            "training": training,
            "resources": {"num_workers": 1},
        }
    )
    compile_settings(job)
    tok = load_chat_tokenizer(job)
    set_seed(0)
    model, _ = peft.apply_peft(build_causal_lm(job, tok), job, None)
    steps = corpus_tools.step_times()
    trainer = build_trainer(job, model, tok, trl_arguments(job, str(work / "hf"), False), load_trl_splits(job), [steps])
    trainer.train()
    return {
        "compile_regions": regions,
        "layers": layers,
        "first_step_s": round(steps.times[0], 1),
        "steps_s": [round(x, 2) for x in steps.times],
        "losses": [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e],
        "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="4,8")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # "<regions>:<layers>", in a child process
    args = parser.parse_args()
    if args.case:
        regions, layers = args.case.split(":")
        print("RESULT " + json.dumps(case(regions == "1", int(layers))), flush=True)
        return
    for layers in [int(n) for n in args.layers.split(",")]:
        for regions in ("0", "1"):
            cmd = [sys.executable, __file__, "--case", f"{regions}:{layers}"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            print(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")), flush=True)


if __name__ == "__main__":
    main()
