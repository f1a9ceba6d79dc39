"""Language-model data shared by both pipelines: texts -> packed fixed-length blocks -> training batches.

``pack_texts`` is the one tokenize-and-pack function: Ray Data runs it in ``map_batches`` on CPU
tasks (:mod:`hfray.data.stream`) and the in-memory path runs it in ``datasets.Dataset.map`` (here).
Packing concatenates documents and cuts the stream into ``block_size`` blocks, dropping the tail of
each batch: no padding, so every token trains and every batch has the same shape.

* masked LM: texts are encoded with the tokenizer's template (``[CLS] text [SEP]``), as BERT's
  ``run_mlm`` groups texts; ``DataCollatorForLanguageModeling`` masks each training batch afresh.
* causal LM: texts are encoded without specials and separated by ``eos`` (GPT-2 style).

Held-out blocks are masked once, with a fixed seed, so each evaluation scores the same task and
perplexity is comparable across the run (random masking per evaluation adds noise to it).
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

TEXT = "text"  # the text column inside both pipelines
IDS = "input_ids"
_SPLIT_BUCKETS = 10_000


def pack_texts(texts: Iterable[str | None], tokenizer: Any, task: str, block_size: int) -> np.ndarray:
    """Token ids of ``texts`` packed into an ``(n_blocks, block_size)`` int32 array."""
    docs = [t for t in texts if t]
    if not docs:
        return np.zeros((0, block_size), dtype=np.int32)
    masked = task == "masked-lm"
    # verbose=False: documents longer than the model are expected here; packing cuts them into blocks.
    encoded = tokenizer(docs, add_special_tokens=masked, return_attention_mask=False, verbose=False)[IDS]
    if not masked:
        eos = tokenizer.eos_token_id
        encoded = [ids + [eos] for ids in encoded]
    stream = np.fromiter((i for ids in encoded for i in ids), dtype=np.int32)
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size)


# Texts that exercise normalizers, pre-tokenizers and byte fallback: the fast path must match HF on all of them.
_PROBE_TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading and   inner   spaces\ttabs\nnewlines  ",
    "Ünïcödé àccents, ß, İstanbul, naïve café; 東京 日本語 中文; emoji 🤗🚀; math ∑x² ≤ 10⁻³",
    "don't can't it's U.S.A. e-mail@example.com https://example.com/a?b=c 3.14159 1,000,000",
    "a" * 300 + " antidisestablishmentarianism",
]


class BackendTokenizer:
    """The Rust ``tokenizers.Tokenizer`` behind an HF fast tokenizer, called the way :func:`pack_texts` calls HF.

    Why: a Ray Data tokenize task that loads the HF tokenizer imports transformers (and torch) first, 2 s on a
    CPU core and 8 s for 12 tasks at once on the H200 machine (``bench/results/overhead_gpu.md``), all before the
    first training batch. ``tokenizers`` alone imports in ~40 ms. Built only from :func:`backend_tokenizer_spec`,
    which checked that it encodes exactly as the HF tokenizer does.
    """

    def __init__(self, serialized: str, eos_token_id: int | None) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(serialized)
        # HF switches both off for a call without truncation/padding; a saved tokenizer.json may carry them on.
        self.backend.no_truncation()
        self.backend.no_padding()
        self.eos_token_id = eos_token_id

    def __call__(self, docs: list[str], add_special_tokens: bool = True, **_: Any) -> dict[str, list[list[int]]]:
        encodings = self.backend.encode_batch(docs, add_special_tokens=add_special_tokens)
        return {IDS: [e.ids for e in encodings]}


def backend_tokenizer_spec(tokenizer: Any, task: str) -> dict[str, Any] | None:
    """What a data task needs to build a :class:`BackendTokenizer`, or None (use the HF tokenizer) unless it
    packs :data:`_PROBE_TEXTS` to exactly the HF tokenizer's blocks (a slow tokenizer, or HF adding behaviour of
    its own, keeps the HF path)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    spec = {"serialized": backend.to_str(), "eos_token_id": tokenizer.eos_token_id}
    try:
        fast = BackendTokenizer(**spec)
        for texts in (_PROBE_TEXTS, _PROBE_TEXTS[:1]):  # blocks of 1: the whole token stream, no tail cut
            if not np.array_equal(pack_texts(texts, fast, task, 1), pack_texts(texts, tokenizer, task, 1)):
                return None
    except Exception:  # noqa: BLE001  (any failure only means: keep HF's own tokenizer)
        return None
    return spec


def in_validation(texts: Iterable[str | None], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask: which texts belong to the held-out split.

    A hash of the text (salted with ``data.split_seed``) decides, so any worker, batch or file order
    agrees on the split without a shuffle: it streams, and the same text always lands on the same side.
    """
    salt = str(seed).encode()
    limit = int(fraction * _SPLIT_BUCKETS)
    return np.array([zlib.crc32(salt + (t or "").encode()) % _SPLIT_BUCKETS < limit for t in texts], dtype=bool)


def block_digest(block: np.ndarray) -> str:
    """A short content hash of one block (shard audits compare these across workers)."""
    return hashlib.blake2b(np.ascontiguousarray(block, dtype=np.int32).tobytes(), digest_size=8).hexdigest()


# ----------------------------------------------------------------------------- batches


def make_lm_collator(
    tokenizer: Any, task: str, mlm_probability: float, seed: int | None, masking: str = "bernoulli"
) -> Any:
    """HF's LM collator; ``masking="exact"`` masks exactly round(p x block) tokens per block (see below)."""
    from transformers import DataCollatorForLanguageModeling

    masked = task == "masked-lm"
    cls = _exact_count_collator() if masked and masking == "exact" else DataCollatorForLanguageModeling
    return cls(
        tokenizer, mlm=masked, mlm_probability=mlm_probability if masked else None, seed=seed, return_tensors="pt"
    )


@functools.cache
def _exact_count_collator() -> type:
    from transformers import DataCollatorForLanguageModeling

    class ExactCountMLMCollator(DataCollatorForLanguageModeling):
        """Masks exactly ``round(mlm_probability x block)`` non-special tokens of every block (BERT's original recipe).

        HF's collator draws every token with probability ``mlm_probability``, so the number of masked tokens, and with
        it the row count of the masked-only MLM head, changes every batch: ``torch.compile`` then recompiles or runs
        dynamic shapes (it lost 6% at batch 256 on an H200 where static counts gained 13%,
        bench/results/step_profile_h200.md). The 80/10/10 replacement is HF's.
        """

        def torch_mask_tokens(self, inputs: Any, special_tokens_mask: Any = None, offset_mapping: Any = None) -> Any:
            import torch

            if special_tokens_mask is None or self.whole_word_mask:
                return super().torch_mask_tokens(inputs, special_tokens_mask, offset_mapping)
            special = special_tokens_mask.bool()
            k = max(1, round(self.mlm_probability * inputs.shape[1]))
            scores = torch.rand(inputs.shape, generator=self.generator).masked_fill_(special, 2.0)  # specials last
            chosen = torch.zeros_like(special).scatter_(1, scores.argsort(dim=1)[:, :k], True) & ~special
            labels = inputs.masked_fill(~chosen, -100)
            roll = torch.rand(inputs.shape, generator=self.generator)
            inputs = inputs.clone()
            inputs[chosen & (roll < self.mask_replace_prob)] = self.tokenizer.convert_tokens_to_ids(
                self.tokenizer.mask_token
            )
            randomized = (
                chosen & (roll >= self.mask_replace_prob) & (roll < self.mask_replace_prob + self.random_replace_prob)
            )
            words = torch.randint(len(self.tokenizer), inputs.shape, dtype=inputs.dtype, generator=self.generator)
            inputs[randomized] = words[randomized]
            return inputs, labels

    # Pickled by reference (DataLoader workers, Ray): resolved through the module __getattr__ below.
    ExactCountMLMCollator.__module__, ExactCountMLMCollator.__qualname__ = __name__, "ExactCountMLMCollator"
    return ExactCountMLMCollator


def __getattr__(name: str) -> Any:
    # The collator class is built on first use (it subclasses a transformers class; this module stays light).
    if name == "ExactCountMLMCollator":
        return _exact_count_collator()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def special_mask(ids: np.ndarray, tokenizer: Any) -> np.ndarray:
    """1 where a token is special: the MLM collator never masks those (cls, sep, pad...)."""
    return np.isin(ids, np.asarray(tokenizer.all_special_ids, dtype=ids.dtype)).astype(np.int64)


def collate_blocks(blocks: np.ndarray, collator: Any, tokenizer: Any) -> dict[str, Any]:
    """Training tensors from packed blocks: masked (MLM) or labels = inputs (causal; the model shifts)."""
    import torch

    ids = torch.as_tensor(np.asarray(blocks), dtype=torch.long)
    if not collator.mlm:
        return {IDS: ids, "labels": ids.clone()}  # packed blocks hold no padding to ignore
    # The collator's own example path pads through the tokenizer row by row; packed blocks need none.
    if collator.seed is not None and collator.generator is None:
        collator.create_rng()
    stm = torch.as_tensor(special_mask(np.asarray(blocks), tokenizer))
    inputs, labels = collator.torch_mask_tokens(ids, special_tokens_mask=stm)
    return {IDS: inputs, "labels": labels}


def fixed_eval_set(
    blocks: np.ndarray, tokenizer: Any, task: str, mlm_probability: float, seed: int, masking: str = "bernoulli"
) -> Any:
    """Held-out blocks as an in-memory ``datasets.Dataset`` with labels fixed once (seeded masking)."""
    import datasets

    if len(blocks) == 0:
        return datasets.Dataset.from_dict({IDS: [], "labels": []})
    # Every worker must hold the same blocks in the same order: sort by content, whatever order they came in.
    order = sorted(range(len(blocks)), key=lambda i: block_digest(blocks[i]))
    ordered = np.asarray(blocks)[order]
    batch = collate_blocks(ordered, make_lm_collator(tokenizer, task, mlm_probability, seed, masking), tokenizer)
    return datasets.Dataset.from_dict({IDS: batch[IDS].tolist(), "labels": batch["labels"].tolist()})


def stack_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Eval batches: blocks already carry their labels, so collating is stacking."""
    import torch

    return {key: torch.as_tensor([f[key] for f in features], dtype=torch.long) for key in (IDS, "labels")}


class BlockCollator:
    """Collate training blocks (``{"input_ids": [...]}``) or held-out blocks (which carry labels)."""

    def __init__(self, collator: Any, tokenizer: Any) -> None:
        self.collator, self.tokenizer = collator, tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if "labels" in features[0]:
            return stack_collator(features)
        return collate_blocks(np.asarray([f[IDS] for f in features]), self.collator, self.tokenizer)


# ----------------------------------------------------------------------------- in-memory path


def pack_dataset(ds: Any, tokenizer: Any, task: str, block_size: int, text_column: str, name: str) -> Any:
    """``datasets`` path: a split of texts -> a Dataset of packed blocks (one ``input_ids`` column)."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return {IDS: pack_texts(batch[text_column], tokenizer, task, block_size).tolist()}

    key = f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{task}|{block_size}|{text_column}"
    return ds.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        # An explicit fingerprint: hashing the closure with dill is slow and floods Ray logs.
        new_fingerprint=hashlib.sha256(f"{ds._fingerprint}|{key}".encode()).hexdigest()[:16],
        desc=f"pack {name}",
    )
