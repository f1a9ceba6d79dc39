"""``HFRAY_TORCH_PROFILE`` (``hfray.train.callbacks.torch_profile``): the record counts what a step does.

No Ray: a tiny model's HF Trainer on CPU with the callback, and the recording window around a hand-written loop
whose host syncs are known. On CPU there is no device activity, so the busy time is 0; the GPU reading is the bench's.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from hfray.train.callbacks.torch_profile import TorchProfileCallback, Window, _union


def test_the_window_counts_each_steps_host_syncs(tmp_path: Path) -> None:
    x = torch.randn(64, 64)
    window = Window(tmp_path / "p", steps=4)
    window.start()
    for _ in range(4):
        y = x @ x
        float(y.sum().item()), bool(y.mean() > 0)  # two syncs a step: .item() and a tensor's truth value
        _ = y[y > 0]  # boolean indexing: a nonzero
    window.stop()
    record = window.write()
    assert record["steps"] == 4 and record["wall_ms"] > 0
    assert record["syncs_per_step"]["aten::_local_scalar_dense"] == pytest.approx(2.0)
    assert record["syncs_per_step"]["aten::nonzero"] == pytest.approx(1.0)
    names = [op for op, _ms, _calls in record["top_host_ops_ms"]]
    assert "aten::mm" in names  # the matmul is among the host ops that took time
    saved = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert saved == record and (tmp_path / "p" / "trace.json.gz").stat().st_size > 0
    assert "aten::mm" in (tmp_path / "p" / "ops.txt").read_text()


def test_busy_time_counts_overlapping_kernels_once() -> None:
    assert _union([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17


def test_the_callback_records_the_steps_after_its_first(tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=100, max_position_embeddings=32)  # fmt: skip
    ids = torch.randint(0, 100, (64, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(str(tmp_path / "hf"), per_device_train_batch_size=4, max_steps=12, report_to=[],
                             save_strategy="no", logging_steps=100, use_cpu=True)  # fmt: skip
    callback = TorchProfileCallback(tmp_path / "p", first=4, steps=3)
    Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=data, callbacks=[callback]).train()
    record = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert record["steps"] == 3 and record["wall_ms"] > 0
    with gzip.open(tmp_path / "p" / "trace.json.gz") as f:
        events = json.load(f)["traceEvents"]
    # exactly the recorded steps: one optimizer step each
    assert sum(str(e.get("name", "")).startswith("Optimizer.step#") for e in events) == 3
