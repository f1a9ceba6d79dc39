"""The ``dpo`` workload of ``bench/throughput_bench.py``: LoRA DPO of the SmolLM2-135M shape, three ways.

Work: a Llama of SmolLM2-135M's shape from its config (random weights), the bench's byte-level BPE tokenizer (as the
``llama``/``sft`` workloads), a LoRA adapter (r 16, alpha 32, all linear layers, as ``sft``), the sigmoid DPO loss
(beta 0.1), preference pairs of FIXED lengths: a prompt of ``seq // 2`` tokens, a chosen and a rejected completion of
``seq - seq // 2`` tokens each (the EOS TRL appends included), so ``seq`` = ``data.max_length`` = a full sequence and
nothing is padded or cut. ``--batch`` counts pairs (2 x batch sequences per forward).

* ``bare`` (:func:`run_bare`, called by ``bench/throughput_bare.py``): a hand-written step on random token ids: the
  reference's log-probs of chosen and rejected with the adapter disabled (what TRL does for a PEFT model), the
  policy's, ``-logsigmoid(beta x (policy - reference margin))``, backward, fused AdamW (GPU), bf16 autocast (GPU),
  the decoder ``torch.compile``d (GPU; the adapter on and off are two graphs); the output head on completion
  positions only (as TRL's fused head), no attention mask (nothing is padded);
* ``plain`` (:func:`plain_main`, called by ``bench/throughput_plain.py``): TRL's own ``DPOTrainer`` with ``peft_config``
  on the same pairs as text (:func:`write_preferences`), TRL's defaults otherwise (its ``gradient_checkpointing``
  default is on; bf16 on GPU);
* ``hfray``: ``hfray train`` of a ``task: dpo`` job (:func:`hfray_sections`), hfray's defaults.

Counted the same way for all three (``hfray.train.callbacks.throughput.preference_counts``; plain and hfray read
the lengths TRL tokenized, bare its own, and they agree): a sample is a pair; tokens per pair = the tokens of both
sequences = 2 x seq (TRL's ``num_tokens`` count); FLOPs per token = 4/3 x the training count of the other workloads
(6 x linear weights + 12 x layers x hidden x seq: the policy's forward and backward, plus the reference's forward),
the head's share scaled to the completion positions. MFU = tokens/s x FLOPs per token / the GPU's dense bf16 peak.
LoRA's backward skips the frozen weights' gradients, so the 6N convention (as for ``sft``) overstates the work the
GPU does; it is the same for every runner. Peak memory: ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

BETA = 0.1
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def lengths(seq: int) -> tuple[int, int]:
    """(prompt, completion) tokens of a pair whose sequences are ``seq`` tokens."""
    return seq // 2, seq - seq // 2


# ----------------------------------------------------------------------------- data (plain, hfray)


def single_token_words(tokenizer: Any, words: list[str], n: int = 400) -> list[str]:
    """Up to ``n`` words that the tokenizer encodes, after a space, as one token each (so texts have exact lengths)."""
    out: list[str] = []
    for word in words:
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            out.append(word)
            if len(out) == n:
                break
    if len(out) < 2:
        raise RuntimeError(f"dpo data: only {len(out)} single-token words in the tokenizer")
    return out


def write_preferences(work: Path, tokenizer_path: str, seq: int, rows: int, seed: int = 0) -> dict[str, str]:
    """Train/validation JSONL of (prompt, chosen, rejected) texts: ``seq // 2`` prompt tokens, completions of one token
    less than the completion length (TRL appends EOS). Checked against the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    counts = Counter((work / "train.txt").read_text().split())
    words = single_token_words(tokenizer, [w for w, _ in counts.most_common()])
    prompt, completion = lengths(seq)
    rng = random.Random(seed)

    def text(n: int, stream: random.Random = rng) -> str:
        return "".join(" " + stream.choice(words) for _ in range(n))

    uneven_rng = random.Random(seed + 1)  # its own stream: the fixed-length pairs stay those of earlier results

    def ragged(n: int) -> int:  # a quarter to all of n tokens
        return uneven_rng.randint(max(1, n // 4), n)

    out = {}
    for split, n in (("dpo_train", rows), ("dpo_validation", 16)):
        pairs = [
            {"prompt": text(prompt), "chosen": text(completion - 1), "rejected": text(completion - 1)} for _ in range(n)
        ]
        ids = tokenizer(pairs[0]["prompt"] + pairs[0]["chosen"], add_special_tokens=False)["input_ids"]
        assert len(ids) == seq - 1, f"dpo data: {len(ids)} tokens, expected {seq - 1}"
        # The ragged variant: prompt and completions each of a random length (real preference data's batches)
        uneven = [
            {
                "prompt": text(ragged(prompt), uneven_rng),
                "chosen": text(ragged(completion - 1), uneven_rng),
                "rejected": text(ragged(completion - 1), uneven_rng),
            }
            for _ in range(n)
        ]
        for name, rows_ in ((split, pairs), (split.replace("dpo_", "dpo_ragged_"), uneven)):
            path = work / f"{name}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in rows_))
            out[name] = str(path)
    return out


def hfray_sections(spec: dict[str, Any], lora: dict[str, Any], ragged: bool = False) -> dict[str, Any]:
    """The ``data``, ``trl`` and ``peft`` sections of the hfray job (the bench builds the rest). ``ragged``: pairs of
    random lengths (prompt and each completion a quarter to all of its fixed length), padded by TRL per batch."""
    prefix = "dpo_ragged_" if ragged else "dpo_"
    data = {
        "train": spec["data"][prefix + "train"],
        "validation": spec["data"][prefix + "validation"],
        "max_length": spec["seq"],
        "max_eval_samples": 16,
    }
    return {"data": data, "trl": {"beta": BETA, "loss_type": "sigmoid"}, "peft": dict(lora)}


# ----------------------------------------------------------------------------- bare


def random_pairs(batch: int, seq: int, vocab: int, device: str, n: int = 4) -> list[dict[str, Any]]:
    """``n`` batches of ``input_ids`` (2 x batch, seq): rows [prompt + chosen] then [prompt + rejected]."""
    import torch

    gen = torch.Generator().manual_seed(0)
    prompt, completion = lengths(seq)
    out = []
    for _ in range(n):
        p = torch.randint(5, vocab, (batch, prompt), generator=gen)
        chosen, rejected = (torch.randint(5, vocab, (batch, completion), generator=gen) for _ in range(2))
        ids = torch.cat([torch.cat([p, chosen], 1), torch.cat([p, rejected], 1)], 0)
        out.append({"input_ids": ids.to(device)})
    return out


def completion_logps(model: Any, ids: Any, prompt: int, trl_head: bool = False) -> Any:
    """Sum of log-probs of each row's completion (positions ``prompt`` on); the head on those positions only.
    ``trl_head``: through TRL's chunked fused head (``trl.kernels.ChunkedLogProbFunction``, the outputs its
    ``DPOTrainer`` asks for: log-probs, entropy, mean logits, top-1) instead of the full logits and cross-entropy."""
    import torch.nn.functional as F

    base = model.get_base_model()
    hidden = base.model(input_ids=ids).last_hidden_state[:, prompt - 1 : -1]
    target = ids[:, prompt:]
    if trl_head:
        from trl.kernels import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as chunk  # TRL's vocabulary tile, as its head uses

        outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
        flat, weight = hidden.reshape(-1, hidden.size(-1)), base.lm_head.weight
        log_probs, *_ = ChunkedLogProbFunction.apply(
            flat, weight, None, target.flatten(), 1.0, chunk, None, 1.0, outputs
        )
        return log_probs.view(target.shape).sum(-1)
    logits = base.lm_head(hidden).float()
    per_token = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    return -per_token.view(target.shape).sum(-1)


def dpo_step(model: Any, prompt: int, device: str, compiled: bool, lr: float = 1e-4, trl_head: bool = False) -> Any:
    """One DPO step: reference (adapter off) and policy log-probs, sigmoid loss, backward, AdamW. Returns the loss.
    ``trl_head``: the log-probs through TRL's fused head (:func:`completion_logps`)."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=device == "cuda")
    if compiled:  # the decoder; adapter on and adapter off compile to two graphs
        model.get_base_model().model.compile()
    autocast = device == "cuda"

    def step(batch: dict[str, Any]) -> Any:
        ids = batch["input_ids"]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad(), model.disable_adapter():
                ref_chosen, ref_rejected = completion_logps(model, ids, prompt, trl_head).chunk(2)
            chosen, rejected = completion_logps(model, ids, prompt, trl_head).chunk(2)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        loss = -F.logsigmoid(BETA * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run_bare(spec: dict[str, Any], model: Any, device: str, compiled: bool) -> tuple[Any, Any, list[Any]]:
    """(step, ThroughputCallback, batches) of the bare DPO runner; ``model`` is the LoRA model on ``device``."""
    from hfray.train.callbacks.throughput import ThroughputCallback, preference_counts

    batch, seq = spec["batch"], spec["seq"]
    prompt, completion = lengths(seq)
    base = model.get_base_model()
    tokens, fpt = preference_counts(base, [prompt] * batch, [completion] * batch, [completion] * batch)
    step = dpo_step(model, prompt, device, compiled, spec.get("learning_rate", 1e-4), spec.get("trl_head", False))
    batches = random_pairs(batch, seq, model.config.vocab_size, device)
    return step, ThroughputCallback(tokens, fpt), batches


# ----------------------------------------------------------------------------- plain


def dpo_trainer(spec: dict[str, Any], gpu: bool, out_dir: str, callbacks: list[Any]) -> Any:
    """TRL's DPOTrainer as its docs show it: a preference dataset, a LoRA config (reference = adapter disabled)."""
    from bench_common import trl_arguments, trl_model_and_tokenizer
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = trl_model_and_tokenizer(spec)
    train = load_dataset("json", data_files={"train": spec["data"]["dpo_train"]})["train"]
    args = DPOConfig(**trl_arguments(spec, gpu, out_dir), beta=BETA)
    lora = LoraConfig(task_type="CAUSAL_LM", **LORA)
    return DPOTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=lora, callbacks=callbacks
    )


def plain_main(spec: dict[str, Any], out: str, started: float) -> dict[str, Any]:
    """Train with TRL's DPOTrainer, timed by hfray's ThroughputCallback; the result (also written to ``out``)."""
    import os
    import time

    import torch

    from hfray.train.callbacks.throughput import ThroughputCallback, count_dpo_pairs

    speed = ThroughputCallback(0.0)
    trainer = dpo_trainer(spec, torch.cuda.is_available(), os.path.join(os.path.dirname(out), "plain-output"), [speed])
    count_dpo_pairs(speed, trainer.train_dataset, trainer.model, spec["seq"])
    trainer.train()
    result = {**speed.summary, "process_started_at": started, "process_ended_at": time.time()}
    result["parameters"] = sum(p.numel() for p in trainer.model.get_base_model().parameters())
    if trainer.is_world_process_zero():
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
    return result
