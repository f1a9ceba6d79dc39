"""Does hfray's LoRA DPO step (TRL's ``DPOTrainer`` loss) do more matrix work than the bare DPO step? (CPU, no Ray)

Counts the FLOPs of one training step (forward of the policy and the reference, backward, optimizer) with
``torch.utils.flop_counter.FlopCounterMode`` for: the bench's bare step (``bench/throughput_dpo.py``: the plain head on
the completion positions, logits and cross-entropy) and TRL's ``DPOTrainer.compute_loss`` with its chunked fused head
in the compact mode GPUs take (the completion positions only; ``trl.trainer.utils._use_triton`` answered True, the
tile fold itself stays torch's on CPU), the reference being the model with its adapter disabled (hfray's LoRA case).
Same model (a SmolLM2-135M-shaped Llama with ``--layers`` layers, LoRA r 16 on every linear layer), the same pairs of
fixed-length prompt + completion token ids. Prints GFLOPs per step and by op for both, and their ratio.

    python bench/dpo_flops_cpu.py --layers 2 --seq 256 --pairs 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "lib")]

import throughput_bare  # noqa: E402  (sibling modules)
import throughput_dpo  # noqa: E402

SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def lora_model(layers: int) -> Any:
    """The bare runner's LoRA model (``throughput_bare.build_model``) of the SmolLM2 shape with ``layers`` layers."""
    import torch

    torch.manual_seed(0)
    architecture = {"model_type": "llama", **SMOLLM2, "num_hidden_layers": layers}
    return throughput_bare.build_model({"workload": "dpo", "architecture": architecture})[0]


def counted(step: Any) -> tuple[float, dict[str, float]]:
    """GFLOPs of one call of ``step`` (after a first, uncounted call), in all and by op."""
    from torch.utils.flop_counter import FlopCounterMode

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op): n / 1e9 for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / 1e9, by_op


def trl_step(model: Any, batch: dict[str, Any], seq: int, pairs: int) -> Any:
    """One step through TRL's ``DPOTrainer.compute_loss`` (its fused head compacting the completion positions)."""
    import torch
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    trl_utils._use_triton = lambda device: True  # the compact path a GPU takes
    from hfray.model.builtin import resolve_model

    # SmolLM2's own tokenizer (the pip-shipped builtin model): TRL's init tokenizes the dataset; the step's ids are ours
    tokenizer = PreTrainedTokenizerFast.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rows = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}] * 4)  # TRL's init needs a dataset
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=pairs,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        beta=throughput_dpo.BETA,
        max_length=seq,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    # hfray's LoRA reference: the adapter disabled (hfray.train.recipes.trl.worker.drop_identity_reference)
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
    ids = batch["input_ids"]
    completion = torch.zeros_like(ids)
    completion[:, throughput_dpo.lengths(seq)[0] :] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
    trainer.model.train()
    opt = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        trainer.compute_loss(trainer.model, dict(inputs)).backward()
        opt.step()
        opt.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=2)
    a = parser.parse_args()
    batch = throughput_dpo.random_pairs(a.pairs, a.seq, SMOLLM2["vocab_size"], "cpu", n=1)[0]
    bare = throughput_dpo.dpo_step(lora_model(a.layers), throughput_dpo.lengths(a.seq)[0], "cpu", compiled=False)
    rows = {"bare": counted(lambda: bare(batch)), "trl": counted(trl_step(lora_model(a.layers), batch, a.seq, a.pairs))}
    for name, (total, by_op) in rows.items():
        print(f"{name}: {total:.2f} GFLOPs a step; by op: " + ", ".join(f"{k} {v:.2f}" for k, v in by_op.items()))
    print(f"trl / bare: {rows['trl'][0] / rows['bare'][0]:.4f}")


if __name__ == "__main__":
    main()
