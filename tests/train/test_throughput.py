"""Throughput accounting and the masked-positions-only MLM head (no Ray: plain models and a plain Trainer)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    Trainer,
    TrainingArguments,
)

from hfray.model.language_model import mlm_loss_on_masked_only
from hfray.train.callbacks.throughput import ThroughputCallback, flops_per_token, memoize_parameter_count, peak_tflops

VOCAB = 100
BERT = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (4, 16), generator=g)
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=g) < 0.2
    labels[picked] = ids[picked]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


MODERNBERT = {**BERT, "intermediate_size": 64, "pad_token_id": 0, "global_attn_every_n_layers": 2, "local_attention": 8}


@pytest.mark.parametrize(
    "build",
    [
        lambda: BertForMaskedLM(BertConfig(intermediate_size=64, **BERT)),
        lambda: ModernBertForMaskedLM(ModernBertConfig(**MODERNBERT)),  # its own sparse_prediction
    ],
    ids=["bert", "modernbert"],
)
def test_masked_only_head_gives_the_same_loss_and_gradients_as_the_full_head(build: Any) -> None:
    torch.manual_seed(0)
    full, sparse = build().eval(), build().eval()
    sparse.load_state_dict(full.state_dict())
    assert mlm_loss_on_masked_only(sparse)
    batch = _batch()
    loss_full, loss_sparse = full(**batch).loss, sparse(**batch).loss
    torch.testing.assert_close(loss_sparse, loss_full)
    loss_full.backward()
    loss_sparse.backward()
    for (name, p_full), p_sparse in zip(full.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(p_sparse.grad, p_full.grad, msg=name)
    assert sparse(**batch).logits.shape[-2:] == (int((batch["labels"] != -100).sum()), VOCAB)
    assert sparse(input_ids=batch["input_ids"]).logits.shape == (*batch["input_ids"].shape, VOCAB)  # fill-mask


def test_masked_only_head_refuses_a_head_split_over_several_modules() -> None:
    model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=1, n_heads=2))
    assert not mlm_loss_on_masked_only(model)  # DistilBERT's head is four sibling modules: left as it is


def test_flops_per_token_counts_linear_weights_head_share_and_attention() -> None:
    model = BertForMaskedLM(BertConfig(intermediate_size=64, **BERT))
    per_layer = 4 * 32 * 32 + 2 * 32 * 64  # q, k, v, attention output + the two MLP projections
    body = 2 * per_layer + 32 * 32  # + the MLM head's transform; BertForMaskedLM has no pooler
    head = VOCAB * 32
    attention = 12 * 2 * 32 * 16
    assert flops_per_token(model, 16) == 6 * body + 6 * head + attention
    assert flops_per_token(model, 16, head_fraction=0.15) == pytest.approx(6 * body + 6 * head * 0.15 + attention)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("Some CPU") is None


def test_throughput_callback_times_a_plain_trainer_and_leaves_out_evaluations(tmp_path) -> None:
    model = BertForMaskedLM(BertConfig(intermediate_size=64, **BERT))
    rows = [{k: v[i] for k, v in _batch(seed).items()} for seed in range(4) for i in range(4)]
    args = TrainingArguments(
        str(tmp_path),
        max_steps=14,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to="none",
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="no",
        logging_steps=100,
        disable_tqdm=True,
    )
    callback = ThroughputCallback(
        16, flops_per_token(model, 16), str(tmp_path / "t.json"), warmup_steps=2, memoize_parameters=True
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:4], callbacks=[callback])
    trainer.train()
    # The Trainer's FLOP log used the parameter count memoized at train start: the same total as the plain count.
    assert getattr(model.num_parameters, "hfray_memoized", False)
    plain = BertForMaskedLM(BertConfig(intermediate_size=64, **BERT)).num_parameters(exclude_embeddings=True)
    assert trainer.state.total_flos == 6 * 14 * 2 * 16 * plain
    # Without the flag (the plain-Trainer baselines of bench/) the callback only times: the model is left alone.
    untouched = BertForMaskedLM(BertConfig(intermediate_size=64, **BERT))
    timer_only = ThroughputCallback(16)
    Trainer(untouched, args, train_dataset=rows, eval_dataset=rows[:4], callbacks=[timer_only]).train()
    assert not getattr(untouched.num_parameters, "hfray_memoized", False)
    s = callback.summary
    # 14 steps, 2 warm-up, the intervals after the evaluations at steps 5 and 10 left out: 10 steady intervals.
    assert s["steps"] == 14 and s["steady_steps"] == 10
    assert s["samples_per_second"] == pytest.approx(2 / s["steady_step_seconds"])
    slowest = s["slowest_steps"]  # [step, seconds], slowest first, steady steps only
    assert len(slowest) == 3 and all(3 <= step <= 14 and step not in (6, 11) for step, _ in slowest)
    assert slowest[0][1] >= slowest[2][1] >= s["steady_step_seconds_median"] > 0
    assert s["tokens_per_second"] == pytest.approx(16 * s["samples_per_second"])
    assert "mfu" not in s and s["peak_memory_bytes_per_rank"] == []  # CPU: no peak to divide by
    assert (tmp_path / "t.json").stat().st_size > 0


def test_memoized_parameter_count_is_counted_once_and_leaves_trainable_counts_live() -> None:
    model = BertForMaskedLM(BertConfig(intermediate_size=64, **BERT))
    want = [model.num_parameters(), model.num_parameters(exclude_embeddings=True)]
    trainable = model.num_parameters(only_trainable=True)
    calls = []
    original = model.num_parameters
    model.num_parameters = lambda **kw: calls.append(kw) or original(**kw)
    memoize_parameter_count(model)
    memoize_parameter_count(model)  # idempotent: no second layer of caching
    for _ in range(3):
        assert [model.num_parameters(), model.num_parameters(exclude_embeddings=True)] == want
    assert len(calls) == 2  # one count per key, not one per call
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) < trainable  # freezing still shows


def test_dpo_pairs_count_both_sequences_cut_at_max_length_and_one_adapter() -> None:
    """A DPO pair's tokens are prompt + chosen and prompt + rejected, each cut at max_length; FLOPs = 4/3 x the
    training count with the head at completion positions; TRL's frozen 'ref' adapter copy is not the policy's."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfray.train.callbacks.throughput import count_dpo_pairs

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear")
    one = get_peft_model(LlamaForCausalLM(config), lora)
    two = get_peft_model(LlamaForCausalLM(config), lora)
    two.add_adapter("ref", lora)  # what TRL's DPOTrainer does to a model wrapped before it
    pairs = Dataset.from_dict(
        {"prompt_ids": [[1] * 6, [1] * 10], "chosen_ids": [[2] * 4, [2] * 4], "rejected_ids": [[3] * 2, [3] * 8]}
    )
    # sequences 10, 8 | 14 -> 12, 18 -> 12: 42 tokens, 10 of them completions (4 + 2 | 2 + 2 after the cut)
    speeds = [ThroughputCallback(0.0), ThroughputCallback(0.0)]
    for speed, model in zip(speeds, (one, two), strict=True):
        count_dpo_pairs(speed, pairs, model, max_length=12)
        assert speed.tokens_per_sample == 21.0
    expected = flops_per_token(one.get_base_model(), round(42 / 4), 10 / 42) * 4 / 3
    assert speeds[0].flops_per_token == pytest.approx(expected)
    assert speeds[1].flops_per_token == pytest.approx(expected)
    assert flops_per_token(two.get_base_model(), 10) > flops_per_token(one.get_base_model(), 10)
