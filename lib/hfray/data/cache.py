"""Tokenized data computed once and reused by every worker, trial and re-run: ``<storage>/.hfray_cache/tokenized``.

The key hashes what the tokenized rows depend on: the data's fingerprint (:func:`hfray.data.splits.fingerprint`,
a hash of the values in order, so an edited file misses), the tokenizer (its serialized vocabulary, merges,
normalizer, special tokens and truncation settings: a retrained or different tokenizer misses) and the settings
the recipe passes (``max_length``, the label order, ...). An entry is a ``datasets.DatasetDict.save_to_disk``
folder, read back memory-mapped (Arrow). Writers build in a private folder and rename it into place, so workers
of one node that miss together each build, the first rename wins and nobody reads a half-written entry.

Only local (or shared-mount) storage paths cache; ``data.cache_tokenized: false`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

CACHE_VERSION = 1  # bump when the tokenized layout of a recipe changes


def cache_root(storage_path: str) -> str | None:
    """``<storage>/.hfray_cache/tokenized`` for a local path; None for a URI (s3://...)."""
    if "://" in storage_path:
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(storage_path)), ".hfray_cache", "tokenized")


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that changes the ids it produces."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: vocabulary, merges, normalizer, pre-tokenizer, post-processor
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # per-call settings, left behind by the last call (max_length is in the key)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    settings = {
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "model_max_length": getattr(tokenizer, "model_max_length", None),
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def cache_key(kind: str, data_fingerprint: str, tokenizer: Any, **settings: Any) -> str:
    """``kind`` (the recipe's tokenization), then a hash of the data, the tokenizer and ``settings``."""
    parts = {"v": CACHE_VERSION, "data": data_fingerprint, "tokenizer": tokenizer_identity(tokenizer), **settings}
    return f"{kind}-{hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]}"


def cached(root: str | None, key: str, build: Callable[[], Any], announce: bool = True) -> tuple[Any, bool]:
    """(the DatasetDict of ``key``, whether it came from the cache); ``build()`` computes it on a miss."""
    import datasets

    if root is None:
        return build(), False
    entry = os.path.join(root, key)
    if os.path.isfile(os.path.join(entry, "dataset_dict.json")):
        if announce:
            print(f"[hfray] tokenized data: cache hit {entry}", flush=True)
        return datasets.load_from_disk(entry), True
    built = build()
    tmp = f"{entry}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        built.save_to_disk(tmp)
        os.rename(tmp, entry)  # atomic; fails when another worker's entry landed first: theirs is the same
        if announce:
            print(f"[hfray] tokenized data: cached {entry}", flush=True)
    except OSError:
        pass  # a read-only or full disk only costs the reuse
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return built, False
