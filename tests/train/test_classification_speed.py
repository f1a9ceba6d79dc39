"""Text classification's speed defaults (``hfray.train.recipes.classification.defaults``): on one GPU, compiled with
CUDA graphs where the run plans enough steps to pay the compile back (the step count is the Trainer's own); batches
without padding go without their all-ones attention mask, and train as with it.

The compiled, padded step keeps the eager loss: ``tests/train/test_speed_options.py::
test_compiled_jobs_pad_batches_to_a_multiple_and_keep_the_loss``. The graphs themselves need a GPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hfray.config import JobConfig
from hfray.data.classification import UnpaddedMaskDropped
from hfray.errors import ConfigError
from hfray.train.arguments import build_kwargs, cudnn_attention, pad_multiple
from hfray.train.recipes.classification.defaults import (
    GRAPHS_MIN_STEPS,
    default_compile,
    padding_collator,
)

LONG = GRAPHS_MIN_STEPS


def _job(workers: int = 1, peft: bool = False, **training: Any) -> JobConfig:
    raw: dict[str, Any] = {
        "name": "cls",
        "task": "text-classification",
        "model": {"name_or_path": "m"},
        "data": {"train": "x.csv", "max_length": 128},
        "training": training,
        "resources": {"num_workers": workers},
    }
    if peft:
        raw["peft"] = {"method": "lora"}
    return JobConfig.from_dict(raw)


def _said(job: JobConfig) -> tuple[bool | None, bool | None]:
    return job.training.torch_compile, job.training.cuda_graphs


def test_one_gpu_compiles_with_cuda_graphs_only_when_the_run_is_long_enough_and_the_job_leaves_it_open() -> None:
    resolved = default_compile(_job(), True, LONG)
    assert _said(resolved) == (True, True)
    assert resolved.training.compile_regions is False  # the whole model one graph: fewer replays a step (measured)
    assert default_compile(_job(compile_regions=True), True, LONG).training.compile_regions is True  # the job's word
    assert default_compile(_job(torch_compile=True), True, 10).training.compile_regions is False
    assert build_kwargs(resolved, "/tmp/o", use_gpu=True)["torch_compile_mode"] == "reduce-overhead"
    assert pad_multiple(resolved) == 64 and cudnn_attention(resolved) is True  # a few shapes; as measured
    kept = {
        "short run": default_compile(_job(), True, LONG - 1),
        "cpu": default_compile(_job(), False, 10 * LONG),
        "two workers": default_compile(_job(workers=2), True, 10 * LONG),
        "lora": default_compile(_job(peft=True), True, 10 * LONG),
        "opted out": default_compile(_job(torch_compile=False), True, 10 * LONG),
        "checkpointing": default_compile(_job(gradient_checkpointing=True), True, 10 * LONG),
        "their mode": default_compile(_job(extra_args={"torch_compile_mode": "max-autotune"}), True, 10 * LONG),
        "zero2": default_compile(_job(strategy="zero2"), True, 10 * LONG),
    }
    assert {k: _said(j) for k, j in kept.items() if _said(j) != (None, None)} == {"opted out": (False, None)}
    assert all(pad_multiple(j) is None and cudnn_attention(j) is False for j in kept.values())  # eager as before
    # The job's own word: compiled whatever the steps, graphs unless it says not.
    assert _said(default_compile(_job(torch_compile=True), True, 10)) == (True, True)
    assert _said(default_compile(_job(torch_compile=True, cuda_graphs=False), True, 10)) == (True, False)
    assert _said(default_compile(_job(cuda_graphs=False), True, 10 * LONG)) == (None, False)  # no graphs: eager
    assert _said(default_compile(_job(cuda_graphs=True), True, 10)) == (True, True)


def test_batches_without_padding_go_without_their_mask_and_train_as_with_it() -> None:
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hfray.model.builtin import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    texts = ["markets rallied today", "stocks fell hard"] * 2  # 5 tokens each: a batch without padding
    texts += [" ".join(["rates rose"] * (1 + i)) + (" sharply" if i % 2 else "") for i in range(4)]  # 4-11 tokens
    rows = [dict(tokenizer(t), labels=int("fell" in t or "sharply" in t)) for t in texts]
    collate = padding_collator(_job(), tokenizer)  # eager: the default drops unpadded masks
    batches = [collate(rows[:4]), collate(rows[4:])]
    assert "attention_mask" not in batches[0] and batches[1]["attention_mask"].min() == 0
    kept = [padding_collator(j, tokenizer) for j in (_job(drop_unpadded_masks=False), _job(torch_compile=True))]
    assert all(type(c) is DataCollatorWithPadding for c in kept)  # compiled: kept (measured slower without it)
    asked = padding_collator(_job(torch_compile=True, drop_unpadded_masks=True), tokenizer)
    assert type(asked) is UnpaddedMaskDropped  # the job's word
    lm = {"name": "lm", "task": "causal-lm", "model": {"name_or_path": "m"}, "data": {"train": "x.txt"}}
    with pytest.raises(ConfigError, match=r"training.drop_unpadded_masks: only for text-classification, not causal"):
        JobConfig.from_dict(lm | {"training": {"drop_unpadded_masks": True}})  # it would do nothing there
    losses = {}
    for name, collator in (("dropped", collate), ("kept", kept[0])):
        torch.manual_seed(0)
        tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        model = BertForSequenceClassification(BertConfig(num_labels=2, vocab_size=tokenizer.vocab_size, **tiny))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses[name] = []
        for batch in [collator(rows[:4]), collator(rows[4:])] * 4:
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[name].append(loss.item())
    assert losses["dropped"] == pytest.approx(losses["kept"], rel=1e-6, abs=1e-7)
    assert sum(losses["dropped"][-2:]) < sum(losses["dropped"][:2])  # it learns
