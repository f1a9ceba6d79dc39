"""hfray's packed SFT trainer on CPU, ``trl.packed_layout: flat`` (TRL's one flattened row per batch) against
``rows`` (the default without FlashAttention): ms per optimizer step and the losses, same data, seed and model.

The trainer is the one hfray's SFT workers build (``hfray.train.recipes.trl.worker``), in this process, no Ray: a
Llama built from a config (hidden 256, 4 layers), a byte-level BPE tokenizer trained here on the synthetic corpus,
``text`` rows of 40-400 words packed into ``--length``-token rows (TRL's BFD packing), full fine-tuning.

    OMP_NUM_THREADS=2 python bench/sft_layout_cpu.py --length 1024 --batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "be",
    "are",
    "were",
    "this",
    "which",
    "or",
    "had",
]


def corpus(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(40, 400)))}) + "\n")
    return path


def tokenizer(path: Path, data: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(path)
    return path


def build_job(work: Path, layout: str, args: argparse.Namespace) -> Any:
    from hfray.config import JobConfig

    arch = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4}
    arch |= {"num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": args.length}
    data = {"train": str(work / "train.jsonl"), "validation": str(work / "val.jsonl"), "max_length": args.length}
    training = {"max_steps": args.steps, "per_device_train_batch_size": args.batch, "learning_rate": 1e-3}
    training |= {"logging_steps": 1, "eval_strategy": "steps", "eval_steps": args.steps}
    return JobConfig.from_dict(
        {
            "name": f"sft-{layout}",
            "task": "sft",
            "model": {"architecture": arch, "tokenizer": str(work / "tok")},
            "data": data,
            "trl": {"format": "text", "packing": True, "packed_layout": layout},
            "training": training,
            "resources": {"num_workers": 1},
        }
    )


def step_times() -> Any:
    """A Trainer callback whose ``times`` are each optimizer step's seconds (also ``bench/compile_regions_cpu.py``)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    return StepTimes()


def run(work: Path, layout: str, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import set_seed

    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, trl_arguments

    job = build_job(work, layout, args)
    tok = load_chat_tokenizer(job)
    set_seed(0)
    model = build_causal_lm(job, tok)
    times = step_times()
    trainer = build_trainer(
        job, model, tok, trl_arguments(job, str(work / f"hf-{layout}"), False), load_trl_splits(job), [times]
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch)])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    steady = times.times[2:]  # the first two steps warm up
    return {
        "layout": layout,
        "batch_shape": list(batch["input_ids"].shape),
        "ms_per_step": round(1000 * sum(steady) / len(steady), 1),
        "losses": [round(x, 4) for x in losses],
        "num_tokens": [e["num_tokens"] for e in trainer.state.log_history if "loss" in e][-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=400, help="text rows in the corpus")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {vars(args)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer(work / "tok", corpus(work / "train.jsonl", args.rows))
        corpus(work / "val.jsonl", 16)
        for layout in ("flat", "rows"):
            print(json.dumps(run(work, layout, args)), flush=True)


if __name__ == "__main__":
    main()
