"""``trl.deferred_metrics`` (``hfray.train.recipes.trl.deferred``): packed SFT's step without TRL's per-step host
syncs, and the same numbers TRL logs (loss, grad norm, entropy, token accuracy, num_tokens), in both packed layouts.

No Ray: the SFT worker's build sequence in this process (``test_trl.sft_trainer``), a tiny Llama on CPU. The host
syncs are counted by ``torch.profiler`` (``aten::_local_scalar_dense``: ``.item()`` and a tensor's truth value)."""

from __future__ import annotations

import json

import pytest
from test_trl import chat_tokenizer, sft_rows, sft_trainer, trl_job, write_jsonl  # noqa: F401 (a fixture)

from hfray.train.callbacks.torch_profile import TorchProfileCallback

KEYS = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")


def _train(tmp_path, chat_tokenizer, layout: str, deferred: bool):  # noqa: F811
    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(96, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(16, 2))
    trl = {"messages_column": "conversation", "packing": True, "packed_layout": layout, "deferred_metrics": deferred}
    training = {"max_steps": 8, "logging_steps": 4, "eval_steps": 8, "per_device_train_batch_size": 4}
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=trl, peft={"method": "lora", "r": 8},
                  training=training)  # fmt: skip
    _, _, _, trainer = sft_trainer(tmp_path, raw, f"hf-{layout}-{deferred}")
    out = tmp_path / f"profile-{layout}-{deferred}"
    trainer.add_callback(TorchProfileCallback(out, first=1, steps=2))  # steps 2-3: no log inside
    trainer.train()
    syncs = json.loads((out / "summary.json").read_text())["syncs_per_step"].get("aten::_local_scalar_dense", 0)
    return trainer.state.log_history, syncs


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_deferred_metrics_log_trls_numbers_without_a_host_sync_per_metric(tmp_path, chat_tokenizer, layout):  # noqa: F811
    logs, syncs = {}, {}
    for deferred in (False, True):
        logs[deferred], syncs[deferred] = _train(tmp_path, chat_tokenizer, layout, deferred)
    for key in KEYS:  # every train log: steps 4 and 8
        trl_values = [e[key] for e in logs[False] if key in e and "eval_loss" not in e and "train_runtime" not in e]
        ours = [e[key] for e in logs[True] if key in e and "eval_loss" not in e and "train_runtime" not in e]
        assert len(trl_values) == 2 and ours == pytest.approx(trl_values, rel=1e-5), key
    totals = [[e["num_tokens"] for e in logs[d] if "num_tokens" in e][-1] for d in (False, True)]
    assert totals[1] == totals[0] > 0  # the run's total: the manifest's count (worker.trl_tokens_trained)
    evals = [[e for e in logs[d] if "eval_loss" in e][-1] for d in (False, True)]
    assert evals[1]["eval_entropy"] == pytest.approx(evals[0]["eval_entropy"], rel=1e-5)  # evaluation: TRL's code
    # TRL reads 5 values a step (num_valid > 0 twice, entropy, accuracy, num_tokens); deferred: none of them
    assert syncs[True] <= syncs[False] - 5, syncs


def test_the_fused_head_scores_every_position_during_a_deferred_step_only() -> None:
    from types import SimpleNamespace

    import torch
    import trl.trainer.utils as trl_utils

    from hfray.train.recipes.trl.deferred import DeferredMetrics

    original = trl_utils._use_triton  # TRL's fused head asks it at every call: compact the valid positions?
    seen = []

    def model(**inputs):
        seen.append(trl_utils._use_triton(torch.device("cuda")))
        mask = torch.tensor([[True, False]])
        return SimpleNamespace(label_mask=mask, log_probs=torch.tensor([[-1.0, 0.0]], requires_grad=True),
                               entropy=torch.ones(1, 2), is_top1=mask)  # fmt: skip

    model.training = True
    args = SimpleNamespace(average_tokens_across_devices=False, loss_type="nll")
    trainer = SimpleNamespace(compute_loss=None, log=None, args=args, compute_loss_func=None, label_smoother=None,
                              accelerator=SimpleNamespace())  # fmt: skip
    deferred = DeferredMetrics(trainer, every_position=True)
    loss = deferred.loss(model, {"input_ids": torch.zeros(1, 2), "position_ids": torch.zeros(1, 2)})
    assert seen == [False] and trl_utils._use_triton is original and float(loss) == 1.0
    assert deferred.tokens_host == 2 and len(deferred.pending) == 1


DPO_KEYS = (
    "loss",
    "grad_norm",
    "entropy",
    "num_tokens",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _train_dpo(tmp_path, chat_tokenizer, peft: dict | None, deferred: bool):  # noqa: F811
    from test_trl import dpo_rows

    columns = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad"}
    train = write_jsonl(tmp_path / "dpo_train.jsonl", dpo_rows(48, 1))
    val = write_jsonl(tmp_path / "dpo_val.jsonl", dpo_rows(8, 2))
    training = {"max_steps": 8, "logging_steps": 4, "eval_steps": 8, "per_device_train_batch_size": 4}
    raw = trl_job(tmp_path, chat_tokenizer, "dpo", train, val, trl={**columns, "deferred_metrics": deferred},
                  training=training, **({"peft": peft} if peft else {}))  # fmt: skip
    _, _, _, trainer = sft_trainer(tmp_path, raw, f"hf-dpo-{bool(peft)}-{deferred}")
    out = tmp_path / f"profile-dpo-{bool(peft)}-{deferred}"
    trainer.add_callback(TorchProfileCallback(out, first=1, steps=2))  # steps 2-3: no log inside
    trainer.train()
    syncs = json.loads((out / "summary.json").read_text())["syncs_per_step"]
    return trainer.state.log_history, sum(syncs.values())


@pytest.mark.parametrize("peft", [{"method": "lora", "r": 8, "dropout": 0.0}, None], ids=["lora", "full"])
def test_deferred_dpo_metrics_log_trls_numbers_without_its_host_syncs(tmp_path, chat_tokenizer, peft):  # noqa: F811
    """LoRA DPO (the reference: the adapter disabled) and full DPO (a frozen copy): TRL's eleven step metrics, the loss
    and the grad norm at both logs are the numbers TRL's own ``compute_loss`` logs; evaluation runs TRL's code."""
    logs, syncs = {}, {}
    for deferred in (False, True):
        logs[deferred], syncs[deferred] = _train_dpo(tmp_path, chat_tokenizer, peft, deferred)

    def train_logs(history: list[dict]) -> list[dict]:
        return [e for e in history if "loss" in e and "eval_loss" not in e and "train_runtime" not in e]

    theirs, ours = train_logs(logs[False]), train_logs(logs[True])
    assert len(theirs) == len(ours) == 2
    for key in DPO_KEYS:  # every train log: steps 4 and 8
        assert [e[key] for e in ours] == pytest.approx([e[key] for e in theirs], rel=1e-5, abs=1e-6), key
    assert ours[-1]["rewards/margins"] != 0 and ours[-1]["num_tokens"] > 0  # the adapter moved; tokens counted
    evals = [[e for e in logs[d] if "eval_loss" in e][-1] for d in (False, True)]
    assert evals[1]["eval_rewards/margins"] == pytest.approx(evals[0]["eval_rewards/margins"], rel=1e-5)
    # TRL's metrics on CPU: 15 reads of a value and 2 boolean-mask indexings a step (29 syncs -> 12: the rest are
    # transformers' all-ones mask check, the Trainer's NaN filter and the CPU optimizer's reads, deferred or not)
    assert syncs[False] - syncs[True] >= 17, syncs
