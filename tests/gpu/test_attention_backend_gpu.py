"""``training.cudnn_attention`` on a GPU: an eager job's worker keeps sdpa off cuDNN's attention (which plans each
new batch shape, ~110 ms of host time on an H100: ``bench/sdpa_backend_probe.py``), a compiled job's lets PyTorch
choose it, and the losses agree either way.

No Ray: ``hfray.train.process.compile_settings`` (what a worker runs before its model trains) then a BERT classifier's
steps on batches of several padded lengths, bf16 autocast.
``python -m pytest -m gpu tests/gpu/test_attention_backend_gpu.py``
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hfray.config import JobConfig
from hfray.train.process import REGIONAL_ENV, compile_settings

pytestmark = pytest.mark.gpu


def _steps(model: Any, lengths: list[int]) -> tuple[list[float], set[str]]:
    """Losses of a few SGD steps and the names of the attention ops they ran."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for n in lengths:
            ids = torch.randint(5, 1000, (8, n), generator=gen).cuda()
            mask = torch.ones_like(ids)
            mask[::2, -n // 4 :] = 0  # padded rows, as a collator pads to the longest
            labels = torch.randint(0, 3, (8,), generator=gen).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    ops = {e.name for e in prof.events() if "attention" in e.name and e.name.startswith("aten::_")}
    return losses, ops


def test_eager_jobs_keep_sdpa_off_cudnn_and_compiled_ones_may_pick_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    for key in (REGIONAL_ENV, "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)
    config = BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    base = {"name": "a", "task": "text-classification", "model": {"name_or_path": "m"}, "data": {"train": "x.csv"}}
    before = torch.backends.cuda.cudnn_sdp_enabled()
    results = {}
    try:
        for training in ({}, {"cudnn_attention": True}):
            compile_settings(JobConfig.from_dict({**base, "training": training}))
            torch.manual_seed(0)
            results[bool(training)] = _steps(BertForSequenceClassification(config).cuda(), [40, 56, 72, 64])
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    (eager_losses, eager_ops), (cudnn_losses, cudnn_ops) = results[False], results[True]
    assert eager_ops and not any("cudnn" in op for op in eager_ops), eager_ops
    if torch.cuda.get_device_capability() >= (9, 0):  # cuDNN's attention is sdpa's first choice from Hopper on
        assert any("cudnn" in op for op in cudnn_ops), cudnn_ops
    assert cudnn_losses == pytest.approx(eager_losses, rel=0.02)
