"""``model.attn_implementation: varlen`` (``hfray.model.varlen``): PyTorch's FlashAttention varlen kernel as a
transformers attention function. The kernel is CUDA-only (``tests/gpu/test_speed_gpu.py`` checks it against sdpa);
here its CPU reference (sdpa document by document) checks what hfray adds around it: the documents' bounds from TRL's
collator or from the position ids, padded rows unpadded, GQA, the packed SFT trainer's flat layout, the config's
GPU-only refusal."""

from __future__ import annotations

import pytest
from test_trl import chat_tokenizer, sft_rows, sft_trainer, trl_job, write_jsonl  # noqa: F401 (a fixture)

from hfray.config import JobConfig
from hfray.errors import ConfigError


def test_varlen_attention_gives_sdpas_losses_for_flat_packed_rows_and_padded_batches(tmp_path, chat_tokenizer):  # noqa: F811
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from hfray.model.varlen import NAME
    from hfray.train.arguments import check_training_arguments

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(64, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    models, trainers = {}, {}
    packed = {"messages_column": "conversation", "packing": True}
    for impl in ("sdpa", "varlen"):
        raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=packed)
        raw["model"]["attn_implementation"] = impl
        _, tokenizer, models[impl], trainers[impl] = sft_trainer(tmp_path, raw, f"hf-{impl}")
    assert models["varlen"].config._attn_implementation == NAME
    assert models["varlen"].config.num_key_value_heads < models["varlen"].config.num_attention_heads  # GQA

    examples = [trainers["sdpa"].train_dataset[i] for i in range(4)]
    rows = trainers["sdpa"].data_collator(examples)  # sdpa: hfray's rows, documents by position
    flat = trainers["varlen"].data_collator(examples)  # varlen: TRL's one flattened row with the documents' bounds
    assert rows["input_ids"].shape[0] == 4 and flat["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in flat

    def loss(impl: str, batch: dict, keys: tuple[str, ...]) -> float:
        with torch.no_grad():
            return models[impl](**{k: batch[k] for k in keys}, use_cache=False).loss.item()

    reference = loss("sdpa", rows, ("input_ids", "labels", "position_ids"))
    base = ("input_ids", "labels", "position_ids")
    assert loss("varlen", flat, (*base, "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")) == (
        pytest.approx(reference, rel=1e-5)
    )
    assert loss("varlen", flat, base) == pytest.approx(reference, rel=1e-5)  # bounds from the position ids
    assert loss("varlen", rows, base) == pytest.approx(reference, rel=1e-5)  # rows: each row starts a document
    # documents attending each other (one document per row, no position ids) would change the loss
    assert loss("varlen", rows, ("input_ids", "labels")) != pytest.approx(reference, rel=1e-5)

    # Padded rows (not packed): the padding is cut out and the rest attended row by row, as sdpa's mask does
    plain = DataCollatorForLanguageModeling(tokenizer.pad_token_id)(
        [{"input_ids": e["input_ids"][: 10 + 7 * i]} for i, e in enumerate(examples)]
    )
    assert not bool(plain["attention_mask"].all())
    padded = ("input_ids", "labels", "attention_mask")
    assert loss("varlen", plain, padded) == pytest.approx(loss("sdpa", plain, padded), rel=1e-5)

    raw["model"]["attn_implementation"] = "varlen"  # the kernel is CUDA's: a CPU job is refused before Ray
    with pytest.raises(ConfigError, match="model.attn_implementation: varlen trains on GPUs only"):
        check_training_arguments(JobConfig.from_dict(raw))


def test_packed_sft_on_gpus_defaults_to_varlen_unless_the_job_says_otherwise(tmp_path, chat_tokenizer):  # noqa: F811
    """The default's rule (``rows.wants_varlen``, applied on GPU workers whose torch and card run the kernel):
    packed SFT, kernel unset -> varlen (TRL's flat row; compiled too, at one length); an explicit kernel,
    ``trl.packed_layout: rows`` or no packing keep theirs, and so does a CPU worker."""
    from hfray.train.recipes.trl.rows import default_attention, wants_varlen

    raw = trl_job(tmp_path, chat_tokenizer, "sft", tmp_path / "t.jsonl", tmp_path / "v.jsonl", trl={"packing": True})
    job = JobConfig.from_dict(raw)
    assert wants_varlen(job)
    kept = [
        JobConfig.from_dict(raw | {"model": raw["model"] | {"attn_implementation": "sdpa"}}),
        JobConfig.from_dict(raw | {"trl": {"packing": True, "packed_layout": "rows"}}),
        JobConfig.from_dict(raw | {"trl": {"packing": False}}),
    ]
    assert not any(wants_varlen(other) for other in kept)
    assert wants_varlen(JobConfig.from_dict(raw | {"training": raw["training"] | {"torch_compile": True}}))
    assert default_attention(job, use_gpu=False) is job  # a CPU worker: sdpa (the kernel is CUDA's)


def test_a_compiled_flat_row_has_one_length_and_the_unpadded_rows_loss(tmp_path, chat_tokenizer):  # noqa: F811
    """``training.torch_compile`` on packed SFT under varlen (its GPU default): TRL's flattened row is padded to
    per-device batch x ``data.max_length`` tokens (the epoch's shorter last batch too) and ``max_length_q`` is
    ``data.max_length``, so a compiled step keeps one shape; the padding is documents of at most ``data.max_length``
    tokens, labels -100: the loss and gradients are the unpadded row's."""
    from hfray.train.recipes.trl.flat import FixedFlatRow

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(64, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    packed = {"messages_column": "conversation", "packing": True}
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=packed, training={"torch_compile": True})
    raw["model"]["attn_implementation"] = "varlen"
    raw["training"]["per_device_train_batch_size"] = 4
    job, _, model, trainer = sft_trainer(tmp_path, raw, "hf-compiled")
    assert isinstance(trainer.data_collator, FixedFlatRow)
    from hfray.train.recipes.trl.flat import densest_row

    width, longest = 4 * job.data.max_length, job.data.max_length

    def loss_and_grad(batch: dict) -> tuple[float, float]:
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.norm().item()

    examples = [trainer.train_dataset[i] for i in range(4)]
    for batch in (examples, examples[:3]):  # a full batch and a shorter last one
        unpadded, fixed = trainer.data_collator.collate(batch), trainer.data_collator(batch)
        have = unpadded["input_ids"].shape[1]
        assert have < width and fixed["input_ids"].shape == (1, width)
        assert fixed["max_length_q"] == fixed["max_length_k"] == longest > unpadded["max_length_q"]
        cu = fixed["cu_seq_lens_q"]
        assert cu[: unpadded["cu_seq_lens_q"].numel()].tolist() == unpadded["cu_seq_lens_q"].tolist()
        assert cu[-1] == width and int(cu.diff().max()) <= longest
        # one length for every batch: the densest packed row's documents + 1 (the padding), times the rows
        assert cu.numel() == 4 * (densest_row(trainer.train_dataset) + 1) + 1 and int(cu.diff().min()) >= 0
        assert (fixed["labels"][0, have:] == -100).all() and fixed["seq_idx"].shape == (1, width)
        assert loss_and_grad(fixed) == pytest.approx(loss_and_grad(unpadded), rel=1e-5)


def test_packed_lora_sft_on_varlen_compiles_by_default_unless_the_job_says_otherwise(tmp_path, chat_tokenizer):  # noqa: F811
    """``training.torch_compile`` unset (``flat.default_compile``, after the GPU worker picked varlen): packed LoRA
    SFT on the varlen kernel is compiled, with CUDA graphs for one training process unless the job says otherwise;
    ``torch_compile: false``, Liger asked for, full-parameter SFT (Liger's default), other adapters, sdpa (rows), no
    packing or a DeepSpeed strategy are not."""
    from hfray.train.recipes.trl.flat import default_compile

    lora = {"method": "lora", "r": 8}
    raw = trl_job(tmp_path, chat_tokenizer, "sft", tmp_path / "t.jsonl", tmp_path / "v.jsonl", trl={"packing": True})
    raw |= {"peft": lora, "model": raw["model"] | {"attn_implementation": "varlen"}}
    raw["resources"] = raw["resources"] | {"num_workers": 1}  # one training process: where graphs were measured
    job = JobConfig.from_dict(raw)
    assert job.training.torch_compile is None and default_compile(job).training.torch_compile is True
    assert default_compile(job).training.cuda_graphs is True  # the step was host-bound: graphs by default too
    said = [
        {"torch_compile": True},
        {"cuda_graphs": False},
        {"extra_args": {"torch_compile_mode": "default"}},
        {"gradient_checkpointing": True},
    ]
    resolved = [default_compile(JobConfig.from_dict(raw | {"training": raw["training"] | s})).training for s in said]
    ddp = JobConfig.from_dict(raw | {"resources": raw["resources"] | {"num_workers": 2}})
    resolved.append(default_compile(ddp).training)  # DDP: compiled, graphs not measured there
    expected = [(True, True), (True, False), (True, None), (True, None), (True, None)]
    assert [(t.torch_compile, t.cuda_graphs) for t in resolved] == expected
    kept = [
        raw | {"training": raw["training"] | {"torch_compile": False}},
        raw | {"training": raw["training"] | {"liger_kernel": True}},
        {k: v for k, v in raw.items() if k != "peft"},
        raw | {"peft": lora | {"method": "ia3"}},
        raw | {"model": raw["model"] | {"attn_implementation": "sdpa"}},
        raw | {"trl": {"packing": False}},
        raw | {"training": raw["training"] | {"strategy": "zero2"}},  # DeepSpeed: not measured compiled
    ]
    assert [default_compile(JobConfig.from_dict(other)).training.torch_compile for other in kept] == [
        False,
        None,
        None,
        None,
        None,
        None,
        None,
    ]
    assert all(default_compile(JobConfig.from_dict(other)).training.cuda_graphs is None for other in kept)


def test_the_flat_rows_document_slots_are_one_length_where_the_densest_row_is_known() -> None:
    from types import SimpleNamespace

    from datasets import Dataset

    from hfray.train.recipes.trl.flat import FixedFlatRow, densest_row

    collate = SimpleNamespace(pad_token_id=0)
    row = FixedFlatRow(collate, rows=4, max_length=8, docs_per_row=3)
    assert row.slots(4, 10) == row.slots(2, 3) == 4 * (3 + 1) + 1  # every batch, the short last one too
    assert row.slots(5, 10) == 5 * 4 + 1  # a larger (evaluation) batch
    assert row.slots(4, 30) == 64  # more than the densest row allows: a power of two, as without one
    assert FixedFlatRow(collate, rows=4, max_length=8).slots(4, 65) == 128
    packed = Dataset.from_dict({"seq_lengths": [[3, 4], [1, 2, 3], [7]]})
    assert densest_row(packed) == 3 and densest_row(packed.select([0, 2])) == 3  # a bound: the underlying table's
    assert densest_row(Dataset.from_dict({"input_ids": [[1]]})) == 0 and densest_row(None) == 0
