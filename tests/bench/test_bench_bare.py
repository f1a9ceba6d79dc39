"""The bare-step runner of ``bench/throughput_bench.py`` (``bench/throughput_bare.py``) on CPU, in this process.

Tiny models from configs (masked LM with its masked-positions head, LoRA SFT and LoRA DPO of a tiny Llama), a few
steps: the runner trains (the loss moves), times steady steps with hfray's ThroughputCallback and yields the bench's
row and ``vs bare`` ratio; the DPO step's reference is the base with the adapter off, and its tokens and FLOPs are
counted as ``bench/throughput_dpo.py`` states.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {
    "mlm": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "vocab_size": 200},
    "sft": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64, "vocab_size": 200},
}  # fmt: skip
TINY["dpo"] = TINY["sft"]


@pytest.mark.parametrize("workload", ["mlm", "sft"])
def test_bare_runner_trains_and_yields_a_bench_row(workload: str) -> None:
    bare, bench = _module("throughput_bare"), _module("throughput_bench")
    spec = {"workload": workload, "architecture": TINY[workload], "steps": 10, "batch": 4, "seq": 16}
    spec["learning_rate"] = 1e-2
    result = bare.run(spec, compiled=True, graphs=True)  # compiled (and graphs) only on a GPU: eager here
    assert result["compiled"] is False and result["cuda_graphs"] is False and result["device"] == "cpu"
    assert result["steps"] == 10 and result["steady_steps"] == 9  # the callback's warm-up: a tenth of the steps
    assert result["samples_per_second"] > 0 and result["tokens_per_second"] == pytest.approx(
        result["samples_per_second"] * 16
    )
    losses = result["losses_every_10"]
    assert len(losses) == 2 and losses[-1] < losses[0]  # it learns the 4 batches it cycles through
    assert result["flops_per_token"] > 0 and result.get("mfu") is None  # no GPU peak to divide by on CPU
    row = bench._row(result, result, result["process_started_at"], result["process_ended_at"])
    half = {"samples_per_second": row["samples_per_second"] / 2}
    rows = [
        {"workload": workload, "runner": "bare", "gpus": 1, **row},
        {"workload": workload, "runner": "hfray", "gpus": 1, **row, **half},
    ]
    bench.add_ratios(rows)
    assert rows[0]["vs_bare_1gpu"] == 1.0 and rows[1]["vs_bare_1gpu"] == 0.5


def test_bare_dpo_runner_starts_at_log_2_learns_the_preferences_and_counts_pairs() -> None:
    from hfray.train.callbacks.throughput import flops_per_token

    bare = _module("throughput_bare")
    spec = {"workload": "dpo", "architecture": TINY["dpo"], "steps": 10, "batch": 4, "seq": 16, "learning_rate": 1e-2}
    result = bare.run(spec, compiled=True)
    losses = result["losses_every_10"]
    # A fresh adapter (B = 0): policy == reference, margin 0, loss log 2. Had the reference kept the adapter on,
    # the margin would stay 0 and the loss would not move.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] < losses[0] - 0.01
    # A pair = prompt 8 + chosen 8 and prompt 8 + rejected 8 tokens; FLOPs = 4/3 x training, head on completions.
    assert result["tokens_per_sample"] == 32 and result["samples_per_second"] * 32 == pytest.approx(
        result["tokens_per_second"]
    )
    model, _ = bare.build_model(spec)
    expected = flops_per_token(model.get_base_model(), 16, 0.5) * 4 / 3
    assert result["flops_per_token"] == pytest.approx(expected) and result["steady_steps"] == 9
