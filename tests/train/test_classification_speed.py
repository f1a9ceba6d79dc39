"""Text classification's speed defaults (``hfray.train.recipes.classification.defaults``): on one GPU, compiled with
CUDA graphs where the run plans enough steps to pay the compile back (the step count is the Trainer's own); batches
without padding go without their all-ones attention mask, and train as with it.

The compiled, padded step keeps the eager loss: ``tests/train/test_speed_options.py::
test_compiled_jobs_pad_batches_to_a_multiple_and_keep_the_loss``. The graphs themselves need a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from hfray.config import JobConfig
from hfray.data.classification import FullBatches, UnpaddedMaskDropped
from hfray.errors import ConfigError
from hfray.train.arguments import build_kwargs, cudnn_attention, pad_multiple
from hfray.train.process import COMPILED_SETUPS
from hfray.train.recipes.classification.defaults import (
    GRAPHS_MIN_STEPS,
    default_compile,
    padding_collator,
    remember_compiled,
    resolve_on_worker,
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
    assert all(j.training.compile_regions is None for j in kept.values())  # not compiled: nothing resolved
    # The job's own word: compiled whatever the steps, graphs unless it says not.
    assert _said(default_compile(_job(torch_compile=True), True, 10)) == (True, True)
    assert _said(default_compile(_job(torch_compile=True, cuda_graphs=False), True, 10)) == (True, False)
    assert _said(default_compile(_job(cuda_graphs=False), True, 10 * LONG)) == (None, False)  # no graphs: eager
    assert _said(default_compile(_job(cuda_graphs=True), True, 10)) == (True, True)


def test_a_short_run_compiles_where_the_compile_cache_holds_its_graphs(tmp_path: Path) -> None:
    """A run under :data:`GRAPHS_MIN_STEPS` stays eager on a cold compile cache and compiles once a compiled run of the
    same setup trained into the storage path's cache (re-runs, resumed runs, a sweep's later trials); another setup
    (label count, batch size) or the job's ``torch_compile: false`` does not."""
    from hfray.train.worker import WorkerRun

    def run(labels: int = 4, **training: Any) -> tuple[WorkerRun, JobConfig]:
        raw = _job(**training).to_dict()
        raw |= {"resources": {"num_workers": 1, "gpus_per_worker": 1}, "storage": {"path": str(tmp_path)}}
        worker_run = WorkerRun(JobConfig.from_dict(raw), {"local_root": str(tmp_path / "local")}, 0, 0, 1)
        return worker_run, resolve_on_worker(worker_run, 800, labels)  # batches of 16, 3 epochs: 150 steps

    short, resolved = run()
    assert _said(resolved) == (None, None)  # cold: eager
    long_run = default_compile(short.job, True, LONG)
    remember_compiled(short, short.job, 4)  # an eager run records nothing
    assert _said(run()[1]) == (None, None)
    remember_compiled(short, long_run, 4)  # a compiled run of this setup trained here
    assert (tmp_path / ".hfray_cache" / "compile" / COMPILED_SETUPS).is_file()
    warm = run()[1]
    assert warm == long_run and _said(warm) == (True, True) and warm.training.compile_regions is False
    assert _said(default_compile(short.job, True, 10, warm=True)) == (True, True)
    others = [run(labels=5)[1], run(per_device_train_batch_size=32)[1], run(torch_compile=False)[1]]
    assert [_said(j) for j in others] == [(None, None), (None, None), (False, None)]
    assert _said(default_compile(short.job, False, 10, warm=True)) == (None, None)  # CPU: never


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
    assert type(kept[0]) is DataCollatorWithPadding
    assert type(kept[1]) is FullBatches and type(kept[1].collator) is DataCollatorWithPadding  # compiled: mask kept
    ddp = padding_collator(_job(workers=2, torch_compile=True), tokenizer)
    assert type(ddp) is DataCollatorWithPadding  # several processes: no filling (accelerate's gather would cut it)
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


@pytest.mark.parametrize("problem_type_set", [True, False], ids=["hfray-config", "without-problem-type"])
def test_a_compiled_classifier_is_traced_once_for_one_batch_shape(problem_type_set: bool) -> None:
    """hfray's classifier config carries ``problem_type`` (``hfray.model.loading.classification_overrides``): the
    compiled whole model (text-classification's GPU default) is traced once for one batch shape. Without it, the
    forward sets the field on its first labelled batch and Dynamo, guarding on it, traces the whole model again at the
    second step (on a GPU a second full compile)."""
    import torch._dynamo as dynamo

    from hfray.model.loading import classification_overrides

    overrides = classification_overrides(["neg", "pos"], type("Tok", (), {"pad_token_id": 0})())
    if not problem_type_set:
        overrides.pop("problem_type")
    tiny = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(intermediate_size=64, **tiny, **overrides))
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(5, 100, (4, 16), generator=g)
        loss = compiled(input_ids=ids, attention_mask=torch.ones_like(ids), labels=(ids[:, 0] > 50).long()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert model.config.problem_type == "single_label_classification"
    assert dynamo.utils.counters["stats"]["unique_graphs"] == (1 if problem_type_set else 2)


def test_a_compiled_run_fills_short_batches_with_ignored_rows_and_trains_and_scores_as_eager(tmp_path) -> None:
    """A compiled job's collator (``padding_collator``: rows to a multiple of 64 tokens, each epoch's short last
    batch filled with copies labelled -100, :class:`FullBatches`) through the HF Trainer on hfray's arguments (whole
    model, aot_eager on CPU): one graph for the whole run (no compile of the short batch's size, nor of the second
    step), the loss of every step as eager's on unfilled batches, and the same evaluation (loss, accuracy: the
    filling rows score nothing)."""
    import torch._dynamo as dynamo
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from hfray.model.builtin import resolve_model
    from hfray.model.loading import classification_overrides
    from hfray.train.process import compile_settings
    from hfray.train.recipes.classification.metrics import classification_metrics_fn

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    words = ["markets", "rallied", "stocks", "fell", "rates", "rose", "sharply", "today"]
    texts = [" ".join(words[(i * 3 + k) % 8] for k in range(3 + i % 9)) for i in range(30)]
    rows = [dict(tokenizer(t), labels=int("fell" in t)) for t in texts]
    filled = FullBatches(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=64), 8)(rows[:3])
    assert filled["input_ids"].shape == (8, 64) and filled["labels"][3:].tolist() == [-100] * 5
    assert torch.equal(filled["input_ids"][3:6], filled["input_ids"][:3])  # its own rows again
    runs = {}
    for compiled in (False, True):
        extra = {"torch_compile": True, "compile_regions": False, "extra_args": {"torch_compile_backend": "aot_eager"}}
        job = _job(per_device_train_batch_size=8, **(extra if compiled else {"drop_unpadded_masks": False}))
        compile_settings(job)
        kwargs = build_kwargs(job, str(tmp_path / f"out-{compiled}"), use_gpu=False)
        kwargs.update(num_train_epochs=2, max_steps=-1, logging_steps=1, save_strategy="no", eval_strategy="epoch")
        kwargs.update(per_device_eval_batch_size=8, load_best_model_at_end=False, metric_for_best_model=None)
        kwargs.update(report_to=[], learning_rate=5e-3)
        tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # compiled RNG streams differ
        overrides = classification_overrides(["other", "fell"], tokenizer)
        torch.manual_seed(0)
        model = BertForSequenceClassification(
            BertConfig(vocab_size=tokenizer.vocab_size, **tiny, **no_dropout, **overrides)
        )
        dynamo.reset()
        dynamo.utils.counters.clear()
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**kwargs),
            train_dataset=rows[:20],  # 8 + 8 + 4 rows an epoch
            eval_dataset=rows[20:],  # 8 + 2
            data_collator=padding_collator(job, tokenizer),
            compute_metrics=classification_metrics_fn(["accuracy"]),
        )
        trainer.train()
        history = trainer.state.log_history
        runs[compiled] = (
            [e["loss"] for e in history if "loss" in e],
            [(e["eval_loss"], e["eval_accuracy"]) for e in history if "eval_loss" in e],
            dynamo.utils.counters["stats"]["unique_graphs"],
        )
    (eager, eager_evals, _), (losses, evals, graphs) = runs[False], runs[True]
    assert graphs == 1
    assert len(losses) == 6 and losses == pytest.approx(eager, rel=1e-4, abs=1e-6)
    assert losses[-1] < losses[0]
    assert [x for e in evals for x in e] == pytest.approx([x for e in eager_evals for x in e], rel=1e-4, abs=1e-6)
