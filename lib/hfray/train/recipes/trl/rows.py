"""Packed SFT batches kept as rows (on each Ray Train worker): TRL's BFD packing, without its one flattened row.

Why: TRL's BFD packing (``trl.packing``) always turns on padding-free batches: the collator concatenates the packed
rows into ONE row of every token in the batch (16 x 1024 -> 1 x 16,384), for FlashAttention's variable-length kernel.
Without that kernel (sdpa, eager: the default wherever ``flash_attn`` is not installed) transformers finds the
documents from the position ids and attends the row under a dense block-diagonal mask over the whole row, so the
attention grows with the square of the batch's tokens: on CPU the flattened batch costs 2.75x the same rows at 4k
tokens and 5.35x at 8k (``bench/results/packed_attention_cpu_dec05.md``), and hfray's own SFT step of a small Llama on
8 x 1024 packed tokens 4.0x (``sft_layout_cpu_dec05.md``); on an H100 hfray's packed LoRA SFT step ran at 2.4-2.8% MFU
(``throughput_gpu_dec05_decoders_h100.md``).

Here the same packed rows stay rows, padded to the batch's longest: no attention mask (with one, transformers would
not look for the documents), position ids that restart at each document (each row's documents attend to themselves
only), and the label of each document's first token masked, as TRL's flattened batch masks it. The computation is the
flattened one's (``tests/train/test_trl.py`` checks the loss); only the attention's mask shrinks to one per row.

On GPUs that run PyTorch's FlashAttention varlen kernel, packed SFT now defaults to it on the flat row instead
(:func:`default_attention`, ``hfray.model.varlen``; compiled steps too, on a flat row of one length,
``hfray.train.recipes.trl.flat``): rows are what sdpa, eager and CPU jobs use.
"""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.model import varlen
from hfray.train.arguments import ATTENTION_PACKAGES

# the kernels that want TRL's flat row: FlashAttention's varlen kernels (the packages' or PyTorch's own)
FLAT_KERNELS = frozenset({*ATTENTION_PACKAGES, varlen.NAME})


def wants_varlen(job: JobConfig) -> bool:
    """Packed SFT with ``model.attn_implementation`` unset, not ``trl.packed_layout: rows``: the jobs whose GPU
    default is PyTorch's varlen kernel (:func:`default_attention`). Compiled too: the flattened row then has one
    length (``hfray.train.recipes.trl.flat``)."""
    trl = job.trl
    if job.task != "sft" or trl is None or not trl.packing or trl.packed_layout == "rows":
        return False
    return job.model.attn_implementation is None


def default_attention(job: JobConfig, use_gpu: bool) -> JobConfig:
    """On a GPU worker, the job :func:`wants_varlen` with ``model.attn_implementation: varlen``: PyTorch's
    FlashAttention varlen kernel (``hfray.model.varlen``) on TRL's flattened row, where this torch and GPU run it.
    On one H100, LoRA SFT of the SmolLM2-135M shape: 1.12x / 1.14x the tokens/s of sdpa on rows and 2 GiB less
    memory (``bench/results/throughput_gpu_dec05_varlen_h100.md``). Opt out: ``model.attn_implementation: sdpa``."""
    if not (use_gpu and wants_varlen(job) and varlen.runs_here()):
        return job
    return job.model_copy(update={"model": job.model.model_copy(update={"attn_implementation": "varlen"})})


def keeps_rows(trainer: Any, layout: str, attn_implementation: str | None) -> bool:
    """The SFT trainer flattens packed batches (padding-free) and ``trl.packed_layout`` says rows: ``auto`` does
    unless the model's kernel is a FlashAttention varlen kernel."""
    if not getattr(trainer, "padding_free", False) or layout == "flat":
        return False
    return layout == "rows" or attn_implementation not in FLAT_KERNELS


class PackedRows:
    """A collator: TRL's packed examples (``input_ids``, ``seq_lengths``, maybe ``labels``) -> a (rows, length) batch
    whose documents are told apart by ``position_ids`` alone."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        # pad_to (the packed length): every batch the same shape, so a compiled step is not compiled again for a
        # batch whose longest row is shorter (rows are at most that long: padding to a multiple pads to it)
        self.collate = DataCollatorForLanguageModeling(
            pad_token_id, padding_free=False, return_position_ids=True, pad_to_multiple_of=pad_to
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        batch.pop("attention_mask")  # with a mask, transformers would let a row's documents attend to each other
        # Padding gets position 0 too: each pad token is a document of its own, seen by no real token (causal), and
        # its label is -100. A document's first token is not predicted from the document before it.
        batch["labels"][batch["position_ids"] == 0] = -100
        return batch


class RowTokens:
    """TRL counts a padding-free batch's tokens as its one row's length; a batch of rows is counted row by row.

    Wraps the trainer's ``compute_loss`` and adds the rows TRL's count missed to its running total and to the
    ``num_tokens`` it logs (the manifest's token count). Rows are counted with their padding to the batch's longest
    row (BFD packing leaves little: 1.3% in ``bench/sft_layout_cpu.py``'s run). TRL 1.16's private
    ``_total_train_tokens`` and ``_metrics``: ``tests/train/test_trl.py`` fails if a TRL upgrade moves them."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.compute_loss = trainer, trainer.compute_loss

    def __call__(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        positions = inputs.get("position_ids")
        before = getattr(self.trainer, "_total_train_tokens", None)
        out = self.compute_loss(model, inputs, *args, **kwargs)
        after = getattr(self.trainer, "_total_train_tokens", None)
        if positions is not None and positions.dim() == 2 and before is not None and after is not None:
            total = before + (after - before) * positions.size(0)
            self.trainer._total_train_tokens = total
            self.trainer._metrics["train"]["num_tokens"] = [total]
        return out


def keep_rows(trainer: Any, pad_to: int | None = None) -> None:
    """Gives a padding-free SFT trainer the rows collator (padding with TRL's own pad token; to ``pad_to`` tokens
    when given) and the row-wise token count."""
    trainer.data_collator = PackedRows(trainer.data_collator.pad_token_id, pad_to)
    trainer.compute_loss = RowTokens(trainer)
