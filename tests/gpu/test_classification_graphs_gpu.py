"""Text classification's GPU default for long runs (``hfray.train.recipes.classification.defaults``): compiled with
CUDA graphs (the whole model by default; layer by layer with ``compile_regions: true``), batches padded to multiples
of 64 tokens. On rows of many lengths (two padded shapes) every step replays
a graph (none skipped, no graph break), the loss curve is eager's, step by step, and evaluations between training
steps (metrics on the logits) score as eager's.

No Ray: hfray's ``build_kwargs`` and collator padding drive a plain HF Trainer on a small BERT built from a config
(dropout off: compiled RNG streams differ), bf16.
``python -m pytest -m gpu tests/gpu/test_classification_graphs_gpu.py``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hfray.config import JobConfig
from hfray.train.arguments import build_kwargs, pad_multiple

pytestmark = pytest.mark.gpu

BERT = {
    "vocab_size": 1000, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 256, "num_labels": 2, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}  # fmt: skip


def _job(**training: Any) -> JobConfig:
    raw = {
        "name": "cls-graphs",
        "task": "text-classification",
        "model": {"name_or_path": "m"},
        "data": {"train": "x.csv", "max_length": 128},
        "training": {"max_steps": 16, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1}
        | training,
        "resources": {"gpus_per_worker": 1, "num_workers": 1},
    }
    return JobConfig.from_dict(raw)


def _rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of 20-120 tokens (two padded shapes: 64 and 128), the label a rule the model can learn."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 121, (n,), generator=gen).tolist()
    rows = []
    for length in lengths:
        ids = torch.randint(5, 1000, (length,), generator=gen)
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": int(ids[0] > 500)})
    return rows


def _train(tmp_path: Path, job: JobConfig) -> tuple[list[float], Any]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        Trainer,
        TrainingArguments,
    )

    from hfray.train.callbacks import cudagraphs
    from hfray.train.process import compile_settings
    from hfray.train.recipes.classification.defaults import padding_collator

    compile_settings(job)  # as the worker does for its resolved job
    kwargs = build_kwargs(job, str(tmp_path / f"out-{job.training.torch_compile}"), use_gpu=True)
    kwargs.update(save_strategy="no", eval_strategy="steps", eval_steps=8, per_device_eval_batch_size=8)
    kwargs.update(load_best_model_at_end=False, metric_for_best_model=None)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]))
    collator = padding_collator(job, BertTokenizerFast(vocab_file=str(vocab)))  # compiled: short batches filled
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**BERT))
    t = job.training
    marks = (
        [cudagraphs.CudaGraphStepCallback()] if cudagraphs.wanted(t.extra_args, t.torch_compile, t.cuda_graphs) else []
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=_rows(124),  # 15 batches of 8 and one of 4 (filled when compiled): 16 steps, one epoch
        eval_dataset=_rows(20, seed=1),  # 8 + 8 + 4 rows: evaluations between training steps, on logits
        data_collator=collator,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        callbacks=marks,
    )
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer


def _evaluations(trainer: Any) -> list[float]:
    """Each evaluation's loss and accuracy, flat (``pytest.approx`` compares nested tuples exactly)."""
    return [e[k] for e in trainer.state.log_history if "eval_loss" in e for k in ("eval_loss", "eval_accuracy")]


@pytest.mark.parametrize("regions", [None, True], ids=["whole-default", "regional"])
def test_long_classification_runs_replay_cuda_graphs_on_ragged_rows_with_the_eager_loss(
    tmp_path: Path, regions: bool | None
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import torch._dynamo as dynamo

    from hfray.train.recipes.classification.defaults import GRAPHS_MIN_STEPS, default_compile

    eager, eager_trainer = _train(tmp_path, _job(torch_compile=False))
    job = default_compile(_job(**({} if regions is None else {"compile_regions": regions})), True, GRAPHS_MIN_STEPS)
    assert pad_multiple(job) == 64 and job.training.compile_regions is bool(regions)  # default: the whole model
    dynamo.utils.counters.clear()
    graphs, trainer = _train(tmp_path, job)
    assert trainer.args.torch_compile and trainer.args.torch_compile_mode == "reduce-overhead"
    assert dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert not dynamo.utils.counters["inductor"]["cudagraph_skips"], dict(dynamo.utils.counters["inductor"])
    assert len(graphs) == 16 and graphs[-1] < graphs[0]
    assert graphs == pytest.approx(eager, rel=0.03)
    evaluations = _evaluations(trainer)  # evaluated mid-run (step 8) and at the end, then trained on
    assert len(evaluations) == 4
    assert evaluations == pytest.approx(_evaluations(eager_trainer), rel=0.03, abs=0.06)  # 20 rows: one row is 0.05
