"""Packed SFT's one flattened row at a fixed length, for a compiled step on the varlen kernel (on each worker).

Why: TRL's padding-free collator gives each batch ONE row of every packed token (``trl.packed_layout: flat``, what
FlashAttention's varlen kernels read, ``hfray.model.varlen``). Its length is the batch's token count, and its
``max_length_q`` the longest document's: both change from batch to batch, so a compiled step (``training.
torch_compile``) would compile again for each new length, and Dynamo guards the Python int ``max_length_q`` by value.
Here the row is padded to ``rows x data.max_length`` tokens (``rows`` = the per-device batch: the epoch's last,
shorter batch too) and ``max_length_q`` is ``data.max_length`` (a bound on every document: BFD packing fits each in
a row; the kernel only sizes its grid by it). ``cu_seq_lens`` (one entry per document) is padded with empty documents
(repeated end offsets, which the kernel skips) to one length for every batch, from the packed data's densest row
(:func:`densest_row`): nothing is compiled again mid-run (a cold recompile of 30 layers costs seconds of a run's
steady state), and a CUDA graph (``torch_compile_mode: reduce-overhead``) is recorded once.

The padding is documents of its own, at most ``data.max_length`` tokens each (their attention costs no more than a
full packed row's; one long pad document would cost the square of its length), labels -100: the loss, its gradients
and the other documents' attention are those of the unpadded row (``tests/train/test_varlen.py``). TRL's ``num_tokens``
counts the padding, as the rows layout's count does (BFD leaves little: the last batch of an epoch the most).
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.train import arguments

DOC_BUCKET = 64  # without a known densest row: cu_seq_lens' length a power of two, at least this
MAX_FIXED_SLOTS = 2048  # above it, the empty documents' grid blocks would cost more than a recompile or two


class FixedFlatRow:
    """A collator: TRL's padding-free collator, its flattened row padded to ``max(rows, examples) x max_length``
    tokens, ``max_length_q`` / ``max_length_k`` fixed at ``max_length``."""

    def __init__(self, collate: Any, rows: int, max_length: int, docs_per_row: int | None = None) -> None:
        self.collate, self.rows, self.max_length = collate, rows, max_length
        self.docs_per_row = docs_per_row  # the packed data's densest row, where known
        self.pad_token_id = collate.pad_token_id

    def slots(self, examples: int, entries: int) -> int:
        """cu_seq_lens' length for a batch of ``examples`` rows that needs ``entries``: one length for every batch
        where the densest row is known (its documents per row + 1 for the padding, times the rows), else the next
        power of two (a few lengths: Dynamo makes the dimension dynamic at its second)."""
        if self.docs_per_row:
            fixed = max(self.rows, examples) * (self.docs_per_row + 1) + 1
            if entries <= fixed <= MAX_FIXED_SLOTS:
                return fixed
        return max(DOC_BUCKET, 1 << (entries - 1).bit_length())

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.collate(examples)
        have = batch["input_ids"].size(1)
        pad = max(self.rows, len(examples)) * self.max_length - have
        if pad > 0:
            sizes = [self.max_length] * (pad // self.max_length) + [pad % self.max_length] * bool(pad % self.max_length)
            batch["input_ids"] = _extend(batch["input_ids"], torch.full((pad,), self.pad_token_id))
            batch["labels"] = _extend(batch["labels"], torch.full((pad,), -100))
            batch["position_ids"] = _extend(batch["position_ids"], torch.cat([torch.arange(n) for n in sizes]))
            ends = have + torch.tensor(sizes).cumsum(0)
            cu = torch.cat([batch["cu_seq_lens_q"], ends.to(torch.int32)])
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
            if "seq_idx" in batch:  # each token's document, as TRL's collator numbers them
                docs = torch.arange(cu.numel() - 1, dtype=torch.int32)
                batch["seq_idx"] = torch.repeat_interleave(docs, cu.diff())[None]
        cu = batch["cu_seq_lens_q"]
        empty = self.slots(len(examples), cu.numel()) - cu.numel()
        if empty > 0:  # empty documents (repeated end offsets): cu_seq_lens of one length
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = torch.cat([cu, cu[-1:].repeat(empty)])
        longest = max(self.max_length, int(batch["max_length_q"]))  # never below a document's length
        batch["max_length_q"] = batch["max_length_k"] = longest
        return batch


def _extend(row: Any, tail: Any) -> Any:
    import torch

    return torch.cat([row, tail.to(row.dtype)[None]], dim=1)


def fix_flat_row(trainer: Any, rows: int, max_length: int) -> None:
    """Gives a padding-free SFT trainer's collator the fixed-length row (:class:`FixedFlatRow`)."""
    splits = [trainer.train_dataset, trainer.eval_dataset]
    densest = max((densest_row(split) for split in splits), default=0) or None
    trainer.data_collator = FixedFlatRow(trainer.data_collator, rows, max_length, densest)


def densest_row(dataset: Any) -> int:
    """The most documents a packed row of ``dataset`` holds (TRL's ``seq_lengths`` column, read by Arrow: no Python
    pass over the rows); 0 where unknown. Over the underlying table: a selection or shuffle only drops rows."""
    import pyarrow.compute as pc

    if dataset is None or "seq_lengths" not in (getattr(dataset, "column_names", None) or []):
        return 0
    lengths = pc.list_value_length(dataset.data.column("seq_lengths"))
    return int(pc.max(lengths).as_py() or 0)


def default_compile(job: JobConfig) -> JobConfig:
    """``training.torch_compile`` unset on packed LoRA SFT that trains on the varlen kernel (``rows.default_attention``
    picks it on GPUs that run it), Liger off: compiled, on the fixed flat row. On one H200, LoRA SFT of the
    SmolLM2-135M shape: 75.6k tokens/s against 45.9k eager, peak memory 10.9 against 13.5 GiB, first step 30 s
    against 27-57 s, the same loss (``bench/results/throughput_gpu_dec05_sft_compile_h200.md``); with one document
    count for every batch, 128-140k on an H100, 0.88-0.96 of the bare compiled step and 6.3-6.9x TRL's SFTTrainer
    (``bench/results/sft_host_bound_h100_dec06.md``). There the step was host-bound (the GPU idle half of it), so
    ``training.cuda_graphs`` is on too, also where the job sets ``torch_compile: true`` itself: on one H100
    166-173k tokens/s against 122-127k without graphs in the same calls, 0.88-0.92 of the bare compiled step
    (188k), the same eval loss and peak memory (``bench/results/sft_cudagraphs_h100_dec06.md``); graphs for one
    training process only, nothing under DeepSpeed/FSDP (:func:`hfray.train.arguments.default_compile`). Not
    measured, so not defaulted: full-parameter SFT (Liger by default there), QLoRA, other adapters, rows (sdpa:
    recompiled)."""
    t, trl = job.training, job.trl
    if job.task != "sft" or trl is None or not trl.packing or t.torch_compile is False:
        return job
    lora = job.peft is not None and job.peft.method == "lora"  # LoRA SFT: no Liger by default (liger_by_default)
    if job.model.attn_implementation != "varlen" or not lora or t.liger_kernel:
        return job
    return arguments.default_compile(job)  # where graphs come too, and where nothing is defaulted
