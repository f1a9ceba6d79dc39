"""The baseline of ``bench/throughput_bench.py``: the plain Hugging Face ``Trainer``, no Ray, no hfray defaults.

Written as a user of transformers would (``run_mlm.py`` / ``run_clm.py`` / ``run_glue.py`` style): tokenize with
``datasets``, pack LM text into blocks, ``DataCollatorForLanguageModeling`` / ``DataCollatorWithPadding``, the
Trainer's default settings plus bf16 on GPU. hfray's ``ThroughputCallback`` only times it, so both
sides are measured alike. One process (``python``) or one per GPU (``torchrun --nproc_per_node N``):

    python bench/throughput_plain.py --spec SPEC.json --out RESULT.json
    torchrun --nproc_per_node 2 bench/throughput_plain.py --spec SPEC.json --out RESULT.json

``sft``: TRL's own ``SFTTrainer`` (LoRA r 16 on all linear layers, packing to ``seq`` tokens) on the CSV's text.
``dpo``: TRL's own ``DPOTrainer`` (the same LoRA) on fixed-length preference pairs (``bench/throughput_dpo.py``).

SPEC (written by the bench): workload (mlm|mbert|clm|llama|cls|sft|dpo), architecture, tokenizer, data, steps, batch,
seq;
``model`` (``--cpu`` cls): a pretrained model, loaded from the ``tokenizer`` folder its ``builtin:`` name resolves to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))
from bench_common import trl_arguments, trl_model_and_tokenizer  # noqa: E402  (a sibling module, not a package)

STARTED = time.time()


def _lm_dataset(spec: dict[str, Any], tokenizer: Any, args: Any) -> Any:
    from datasets import load_dataset

    raw = load_dataset("text", data_files={"train": spec["data"]["train"]})["train"]
    seq = spec["seq"]

    def group(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:  # run_mlm.py's group_texts
        ids = [i for doc in batch["input_ids"] for i in doc]
        total = len(ids) // seq * seq
        return {"input_ids": [ids[i : i + seq] for i in range(0, total, seq)]}

    with args.main_process_first(desc="tokenize"):
        eos = tokenizer.eos_token if spec["workload"] in ("clm", "llama") else None
        tokenized = raw.map(
            lambda b: tokenizer([t + eos if eos else t for t in b["text"]], add_special_tokens=eos is None),
            batched=True,
            remove_columns=["text"],
        )
        return tokenized.map(group, batched=True, remove_columns=tokenized.column_names)


def _cls_dataset(spec: dict[str, Any], tokenizer: Any, args: Any) -> tuple[Any, int]:
    from datasets import load_dataset

    raw = load_dataset("csv", data_files={"train": spec["data"]["train_csv"]})["train"]
    labels = sorted(set(raw["label"]))
    with args.main_process_first(desc="tokenize"):
        encoded = raw.map(
            lambda b: {
                **tokenizer(b["text"], truncation=True, max_length=spec["seq"]),
                "labels": [labels.index(x) for x in b["label"]],
            },
            batched=True,
            remove_columns=raw.column_names,
        )
    return encoded, len(labels)


def _model_and_data(spec: dict[str, Any], args: Any) -> tuple[Any, Any, Any, float, float]:
    """(model, train set, collator, tokens per sample, head fraction for the FLOP count)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
    )

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    workload = spec["workload"]
    if spec.get("model"):  # --cpu: a pretrained model with a fresh head (spec["tokenizer"] is its folder)
        train, n_labels = _cls_dataset(spec, tokenizer, args)
        model = AutoModelForSequenceClassification.from_pretrained(spec["tokenizer"], num_labels=n_labels)
        lengths = [len(x) for x in train["input_ids"]]
        return model, train, DataCollatorWithPadding(tokenizer), sum(lengths) / len(lengths), 1.0
    arch = dict(spec["architecture"])
    arch.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    if workload == "cls":
        train, n_labels = _cls_dataset(spec, tokenizer, args)
        config.num_labels = n_labels
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForSequenceClassification.from_config(config)
        lengths = [len(x) for x in train["input_ids"]]
        return model, train, DataCollatorWithPadding(tokenizer), sum(lengths) / len(lengths), 1.0
    train = _lm_dataset(spec, tokenizer, args)
    if workload in ("mlm", "mbert"):
        model = AutoModelForMaskedLM.from_config(config)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        return model, train, collator, spec["seq"], 0.15
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_config(config)
    return model, train, DataCollatorForLanguageModeling(tokenizer, mlm=False), spec["seq"], 1.0


def _sft_trainer(spec: dict[str, Any], gpu: bool, out_dir: str, callbacks: list[Any]) -> Any:
    """TRL's SFTTrainer as its docs show it: a text dataset, a LoRA config, packing."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = trl_model_and_tokenizer(spec)
    train = load_dataset("csv", data_files={"train": spec["data"]["train_csv"]})["train"].select_columns(["text"])
    args = SFTConfig(**trl_arguments(spec, gpu, out_dir), packing=True)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear")
    return SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora, callbacks=callbacks
    )


def _sft_main(spec: dict[str, Any], out: str) -> None:
    import torch

    from hfray.train.callbacks.throughput import ThroughputCallback, flops_per_token

    speed = ThroughputCallback(spec["seq"])
    trainer = _sft_trainer(spec, torch.cuda.is_available(), os.path.join(os.path.dirname(out), "plain-output"), [speed])
    base = trainer.model.get_base_model()
    speed.flops_per_token = flops_per_token(base, spec["seq"])
    trainer.train()
    if trainer.is_world_process_zero():
        result = {**speed.summary, "process_started_at": STARTED, "process_ended_at": time.time()}
        result["parameters"] = sum(p.numel() for p in base.parameters())
        with open(out, "w") as f:
            json.dump(result, f, indent=2)


def main() -> None:
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from hfray.train.callbacks.throughput import ThroughputCallback, flops_per_token

    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    with open(cli.spec) as f:
        spec = json.load(f)
    if spec["workload"] == "sft":
        return _sft_main(spec, cli.out)
    if spec["workload"] == "dpo":
        import throughput_dpo

        throughput_dpo.plain_main(spec, cli.out, STARTED)
        return None
    gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(cli.out), "plain-output"),
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        learning_rate=1e-4,
        bf16=gpu,
        use_cpu=not gpu,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to="none",
        disable_tqdm=True,
    )
    set_seed(0)
    model, train, collator, tokens_per_sample, head_fraction = _model_and_data(spec, args)
    speed = ThroughputCallback(
        tokens_per_sample, flops_per_token(model, spec["seq"], head_fraction)
    )  # warm-up steps: the callback's rule, as in hfray runs
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[speed])
    trainer.train()
    if trainer.is_world_process_zero():
        result = {**speed.summary, "process_started_at": STARTED, "process_ended_at": time.time()}
        result["parameters"] = sum(p.numel() for p in model.parameters())
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
