"""``hfray tokenizer JOB``: train a WordPiece, BPE or Unigram tokenizer with Hugging Face ``tokenizers``.

The tokenizer is trained on the driver, where this module runs (``tokenizers`` trainers are multi-threaded
Rust and stream the texts), wrapped as a ``PreTrainedTokenizerFast`` and saved with ``save_pretrained`` into the
folder ``model.tokenizer`` names, so ``AutoTokenizer.from_pretrained(folder)`` loads it and the
pre-training job that follows uses it. ``hfray_tokenizer.json`` next to it records the settings it
was trained with: re-running the same job reuses the tokenizer; a changed job refuses to overwrite
it silently (``--force`` retrains).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hfray.config import JobConfig
from hfray.errors import ConfigError, DataError, Problem

MANIFEST = "hfray_tokenizer.json"


@dataclass
class TokenizerSummary:
    path: str
    vocab_size: int
    texts: int
    seconds: float
    reused: bool


def _normalizer(algorithm: str, lowercase: bool) -> Any:
    from tokenizers import normalizers

    if algorithm == "wordpiece":
        # BERT's: clean control chars, split CJK, strip accents when lowercasing (as bert-base-uncased).
        return normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    steps = [normalizers.NFKC() if algorithm == "unigram" else normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def _model_and_trainer(settings: Any, specials: list[str], unk: str | None) -> tuple[Any, Any]:
    """The tokenizers model, pre-tokenizer, decoder and trainer of one algorithm."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    common = {"vocab_size": settings.vocab_size, "special_tokens": specials, "show_progress": False}
    if settings.algorithm == "wordpiece":
        parts = (models.WordPiece(unk_token=unk or "[UNK]"), pre_tokenizers.BertPreTokenizer(), decoders.WordPiece())
        trainer = trainers.WordPieceTrainer(min_frequency=settings.min_frequency, **common)
    elif settings.algorithm == "bpe":
        # Byte-level (GPT-2, RoBERTa): every string is encodable, so no unknown token is ever produced.
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        parts = (models.BPE(), byte_level, decoders.ByteLevel())
        trainer = trainers.BpeTrainer(
            min_frequency=settings.min_frequency, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common
        )
    else:
        parts = (models.Unigram(), pre_tokenizers.Metaspace(), decoders.Metaspace())
        trainer = trainers.UnigramTrainer(unk_token=unk, **common)
    return parts, trainer


def _post_processor(roles: dict[str, str], specials: list[str], algorithm: str) -> Any:
    """``[CLS] text [SEP]`` when the tokenizer has cls/sep (MLM); causal LM adds eos while packing instead."""
    from tokenizers import processors

    if "cls" in roles and "sep" in roles:
        cls, sep = roles["cls"], roles["sep"]
        return processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, specials.index(cls)), (sep, specials.index(sep))],
        )
    return processors.ByteLevel(trim_offsets=False) if algorithm == "bpe" else None


def build_tokenizer(job: JobConfig) -> tuple[Any, Any, list[str]]:
    """An untrained ``tokenizers.Tokenizer``, its trainer, and the ordered special tokens (ids 0..n-1)."""
    from tokenizers import Tokenizer

    settings = job.tokenizer
    assert settings is not None
    roles = settings.roles(job.task)
    specials = list(dict.fromkeys(roles.values()))  # one id per token even when bos == eos
    (model, pre_tokenizer, decoder), trainer = _model_and_trainer(settings, specials, roles.get("unk"))
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer(settings.algorithm, settings.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    return tokenizer, trainer, specials


def wrap_fast(tokenizer: Any, roles: dict[str, str], job: JobConfig) -> Any:
    """A transformers fast tokenizer with the special-token roles set, as AutoTokenizer will load it."""
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(roles.values()))
    post = _post_processor(roles, specials, job.tokenizer.algorithm)  # type: ignore[union-attr]
    if post is not None:
        tokenizer.post_processor = post
    max_len = (job.model.architecture or {}).get("max_position_embeddings")
    kwargs = {f"{role}_token": token for role, token in roles.items()}
    if max_len:
        kwargs["model_max_length"] = int(max_len)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **kwargs)


def iter_texts(job: JobConfig, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of training texts from ``tokenizer.source`` (default ``data.train``), via hfray's loaders."""
    from hfray.data.sources import load_source

    settings = job.tokenizer
    assert settings is not None
    field = "tokenizer.source" if settings.source else "data.train"
    ds = load_source(settings.source or job.data.train, job.data, field)
    column = job.data.text_column
    if column not in ds.column_names:
        raise DataError(f"{field}: no column data.text_column {column!r}; the data has columns {ds.column_names}")
    if settings.max_texts is not None:
        ds = ds.select(range(min(settings.max_texts, len(ds))))
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        yield [t for t in batch[column] if t]


def _settings_record(job: JobConfig) -> dict[str, Any]:
    """What decides the tokenizer; paths made absolute so 'hfray tokenizer' and 'hfray train' agree."""
    from hfray.data.sources import absolute_source

    settings = job.tokenizer.model_dump(mode="json")  # type: ignore[union-attr]
    settings["source"] = absolute_source(settings["source"] or job.data.train)
    return {"task": job.task, "tokenizer": settings, "text_column": job.data.text_column}


def _existing(path: str, record: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The manifest of a tokenizer already trained with these settings; an error if it differs."""
    manifest_path = os.path.join(path, MANIFEST)
    if force or not os.path.exists(manifest_path):
        if not force and os.path.isdir(path) and os.listdir(path):
            raise ConfigError(
                [
                    Problem(
                        "model.tokenizer",
                        f"{path} exists and was not written by hfray tokenizer; choose an empty folder or pass --force",
                    )
                ]
            )
        return None
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("settings") != record:
        raise ConfigError(
            [
                Problem(
                    "model.tokenizer",
                    f"{path} holds a tokenizer trained with other settings "
                    f"({manifest.get('settings')}); pass --force to retrain it",
                )
            ]
        )
    return manifest


def train_tokenizer(job: JobConfig, force: bool = False) -> TokenizerSummary:
    """Train the job's tokenizer into ``model.tokenizer``, or reuse the one already there."""
    if job.tokenizer is None:
        raise ConfigError([Problem("tokenizer", "this job has no tokenizer section to train from")])
    path = os.path.abspath(os.path.expanduser(job.model.tokenizer or ""))
    record = _settings_record(job)
    found = _existing(path, record, force)
    if found is not None:
        return TokenizerSummary(path, found["vocab_size"], found["texts"], found["seconds"], reused=True)
    started = time.time()
    tokenizer, trainer, _ = build_tokenizer(job)
    counted = {"texts": 0}

    def counting() -> Iterator[list[str]]:
        for batch in iter_texts(job):
            counted["texts"] += len(batch)
            yield batch

    tokenizer.train_from_iterator(counting(), trainer=trainer)
    if counted["texts"] == 0:
        raise DataError("tokenizer: the corpus holds no non-empty texts")
    fast = wrap_fast(tokenizer, job.tokenizer.roles(job.task), job)
    fast.save_pretrained(path)
    seconds = round(time.time() - started, 2)
    manifest = {"settings": record, "vocab_size": len(fast), "texts": counted["texts"], "seconds": seconds}
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return TokenizerSummary(path, len(fast), counted["texts"], seconds, reused=False)
